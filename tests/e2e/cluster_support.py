"""Several ``python -m router`` and ``python -m ptth`` children behind a real HAProxy, for the
several-routers and rolling-restart tests (README, "Running several routers").

Each child lives in an exit stack of its own, so a test can kill, stop (SIGTERM: drain) and
replace one while the others run; all are killed and reaped when the cluster closes.
"""

from __future__ import annotations

import re
import signal
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import httpx
import trio

from tests.support import Child, child, free_port

APP = "tests.e2e.apps_drain:app"
REGISTERED_ROUTER = re.compile(rb"registered service=")
REGISTERED_HELPER = re.compile(rb"registered with")


@dataclass
class Member:
    """One child process and the stack that owns it."""

    proc: Child
    stack: AsyncExitStack

    async def close(self) -> None:
        await self.stack.aclose()

    async def terminate(self, timeout: float = 20) -> None:
        """SIGTERM (the process drains), wait for it to exit, reap it."""
        self.proc.process.send_signal(signal.SIGTERM)
        with trio.fail_after(timeout):
            await self.proc.process.wait()
        await self.close()

    def count(self, pattern: re.Pattern[bytes]) -> int:
        return len(pattern.findall(bytes(self.proc.output)))

    async def wait_count(self, pattern: re.Pattern[bytes], n: int, timeout: float = 20) -> None:
        with trio.move_on_after(timeout):
            while self.count(pattern) < n:
                if self.proc.process.poll() is not None:
                    raise AssertionError(f"child exited; output:\n{self.proc.text()}")
                await trio.sleep(0.05)
            return
        raise AssertionError(f"{pattern.pattern!r} not seen {n} times in:\n{self.proc.text()}")


@dataclass
class RouterSlot:
    front: int
    tunnel: int
    member: Member | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.front}"

    @property
    def tunnel_addr(self) -> str:
        return f"127.0.0.1:{self.tunnel}"


@dataclass
class Cluster:
    nursery: trio.Nursery
    routers: list[RouterSlot] = field(default_factory=list)
    backends: list[Member] = field(default_factory=list)

    async def _spawn(self, *args: str, **env: str) -> Member:
        stack = AsyncExitStack()
        proc = await stack.enter_async_context(child(self.nursery, *args, **env))
        return Member(proc, stack)

    async def start_router(self, slot: RouterSlot) -> Member:
        """``python -m router`` on the slot's fixed ports (a replacement reuses them)."""
        member = await self._spawn(
            "-m",
            "router",
            "--http",
            f"127.0.0.1:{slot.front}",
            "--tunnel",
            f"127.0.0.1:{slot.tunnel}",
            "--access-log",
            "false",
            "--drain-timeout",
            "5",
            "--admin",
            "none",  # three routers on one machine: no shared default admin port
        )
        await member.proc.wait_for(re.compile(rb"front end on"))
        slot.member = member
        return member

    async def add_routers(self, n: int) -> None:
        for _ in range(n):
            slot = RouterSlot(free_port(), free_port())
            self.routers.append(slot)
            await self.start_router(slot)

    async def start_backend(self, name: str, *, wait: bool = True) -> Member:
        """``python -m ptth`` given every router; waits until it registered with each."""
        args = ["-m", "ptth", APP, "--drain-timeout", "5", "--loop", "asyncio"]
        for slot in self.routers:
            args += ["--router", slot.tunnel_addr]
        member = await self._spawn(*args, PTTH_TEST_BACKEND=name)
        if wait:
            await member.wait_count(REGISTERED_HELPER, len(self.routers))
        self.backends.append(member)
        return member

    async def aclose(self) -> None:
        members = [m for m in self.backends] + [s.member for s in self.routers if s.member]
        for member in members:
            await member.close()


async def wait_serving(url: str, n: int = 20, timeout: float = 20) -> None:
    """``n`` requests in a row answer 200 at ``url`` (HAProxy saw every router up)."""
    async with httpx.AsyncClient(timeout=2) as client:
        with trio.fail_after(timeout):
            ok = 0
            while ok < n:
                try:
                    response = await client.get(url + "/health")
                except httpx.HTTPError:
                    response = None
                if response is not None and response.status_code == 200:
                    ok += 1
                else:
                    ok = 0
                    await trio.sleep(0.1)
