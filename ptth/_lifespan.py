"""ASGI ``lifespan``: startup before any tunnel opens, shutdown after the last one drained.

An app that does not speak lifespan (it raises on the scope, or returns at once) is served
anyway, unlike hypercorn, which fails at start-up in that case.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.abc

from .errors import LifespanError
from .types import ASGIApp, Message

__all__ = ["Lifespan"]

log = logging.getLogger("ptth.lifespan")


class Lifespan:
    """Run the app's lifespan task in ``nursery``; ``startup()``/``shutdown()`` wait for answers."""

    def __init__(self, app: ASGIApp, *, timeout: float = 60.0) -> None:
        self.app = app
        self.timeout = timeout
        self.supported = True
        self.state: dict[str, Any] = {}
        self._to_app_send, self._to_app_recv = anyio.create_memory_object_stream[Message](2)
        self._from_app_send, self._from_app_recv = anyio.create_memory_object_stream[Message](2)
        self._app_done = anyio.Event()
        self._received = False
        self._error: Exception | None = None
        # The app's lifespan task must outlive a cancellation of ``serve`` long enough to hear
        # lifespan.shutdown, so it runs shielded and only ``close()`` cancels it.
        self._app_scope = anyio.CancelScope(shield=True)

    async def _receive(self) -> Message:
        self._received = True
        return await self._to_app_recv.receive()

    async def _run(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            with self._app_scope:
                await self.app(scope, self._receive, self._from_app_send.send)
        except Exception as exc:
            if self._received:
                self._error = exc  # it took the startup message, then crashed: a real failure
            else:
                log.info("app does not support lifespan (%r); serving without it", exc)
                self.supported = False
        finally:
            self._app_done.set()

    async def _exchange(self, message_type: str) -> None:
        await self._to_app_send.send({"type": message_type})
        with anyio.move_on_after(self.timeout) as scope:
            while True:
                answer: Message | None = None
                async with anyio.create_task_group() as nursery:

                    async def wait_answer() -> None:
                        nonlocal answer
                        answer = await self._from_app_recv.receive()
                        nursery.cancel_scope.cancel()

                    async def wait_exit() -> None:
                        await self._app_done.wait()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(wait_answer)
                    nursery.start_soon(wait_exit)
                if answer is None:
                    if self._error is not None:
                        raise LifespanError(f"{message_type} raised {self._error!r}") from (
                            self._error
                        )
                    if message_type == "lifespan.startup" and self.supported:
                        self.supported = False  # returned without answering: treat as unsupported
                    return
                if answer["type"] == f"{message_type}.complete":
                    return
                if answer["type"] == f"{message_type}.failed":
                    raise LifespanError(f"{message_type} failed: {answer.get('message', '')}")
        if scope.cancelled_caught:
            raise LifespanError(f"{message_type} timed out after {self.timeout} s")

    async def startup(self, nursery: anyio.abc.TaskGroup) -> None:
        nursery.start_soon(self._run)
        await self._exchange("lifespan.startup")

    async def shutdown(self) -> None:
        if self.supported and not self._app_done.is_set():
            await self._exchange("lifespan.shutdown")

    def close(self) -> None:
        """Cancel the app's lifespan task (after shutdown, or when startup never finished)."""
        self._app_scope.shield = False
        self._app_scope.cancel()
        for end in (
            self._to_app_send,
            self._to_app_recv,
            self._from_app_send,
            self._from_app_recv,
        ):
            end.close()
