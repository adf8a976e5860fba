"""``python -m router --workers N``: a supervisor and N worker processes sharing the ports.

ARCHITECTURE.md, "Several cores". The supervisor binds the front-end and tunnel ports itself
(each worker its own SO_REUSEPORT sockets, or one set shared by all), starts every worker as
``python -m router ... --worker-id RUN/I`` with its sockets inherited, forwards SIGHUP (reload)
and SIGTERM/SIGINT (graceful drain in every worker), and restarts a worker that dies, with
backoff. A worker that keeps dying within seconds of its start makes the supervisor give up
(exit 1): a configuration no worker can run with must not loop forever. The supervisor keeps
its copies of the sockets open, so connections that arrive while a worker restarts wait in its
backlog instead of being refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from ptth.errors import ConfigError
from ptth.proto.address import format_address, parse_address

from .config import MAX_WORKERS, RouterConfig

__all__ = ["RestartPolicy", "Supervisor", "bind_sockets", "worker_count"]

log = logging.getLogger("router.workers")

# A worker that exits sooner than this after its start counted as failing to start.
START_WINDOW = 10.0
# Consecutive failed starts of one worker before the supervisor gives up.
MAX_START_FAILURES = 5
LISTEN_BACKLOG = 65535  # the kernel caps it at net.core.somaxconn


def worker_count(setting: str) -> int:
    """``--workers``: a number, or ``auto`` for one per core this process may run on (at most
    ``MAX_WORKERS``)."""
    text = setting.strip().lower()
    if text != "auto":
        return int(text)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


@dataclass
class RestartPolicy:
    """When to restart a worker that exited; pure (times are passed in).

    Backoff doubles from ``base`` to ``cap`` while the worker keeps dying young, and is back
    to ``base`` once one run lasted ``START_WINDOW``.
    """

    base: float = 0.5
    cap: float = 10.0
    max_failures: int = MAX_START_FAILURES
    failures: int = field(default=0, init=False)

    def exited(self, lived: float) -> float | None:
        """The delay before the next start, or None to give up."""
        if lived >= START_WINDOW:
            self.failures = 0
            return self.base
        self.failures += 1
        if self.failures >= self.max_failures:
            return None
        return float(min(self.cap, self.base * 2 ** (self.failures - 1)))


def bind_sockets(address: str, sets: int, reuse_port: bool) -> list[list[socket.socket]]:
    """``sets`` groups of listening sockets on ``address`` (every address it resolves to), all
    on one port (port 0 is resolved by the first bind). Several groups need SO_REUSEPORT."""
    host, port = parse_address(address, allow_port_zero=True)
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {address}: {exc}") from None
    targets = list(dict.fromkeys((info[0], info[4][0]) for info in infos))
    groups: list[list[socket.socket]] = []
    try:
        for _ in range(sets):
            group: list[socket.socket] = []
            groups.append(group)
            for family, ip in targets:
                sock = socket.socket(family, socket.SOCK_STREAM)
                group.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((ip, port))
                port = sock.getsockname()[1]
                sock.listen(LISTEN_BACKLOG)
    except BaseException:
        for group in groups:
            for sock in group:
                sock.close()
        raise
    return groups


@dataclass
class _Worker:
    index: int
    sockets: dict[str, list[socket.socket]]
    process: trio.Process | None = None


class Supervisor:
    """Runs the workers until a signal stops them (``run`` returns the exit status)."""

    def __init__(self, config: RouterConfig, argv: Sequence[str], count: int) -> None:
        self.config = config
        self.argv = list(argv)
        self.count = count
        self.run_id = secrets.token_hex(4)
        reuse_port = config.reuse_port and hasattr(socket, "SO_REUSEPORT")
        if config.reuse_port and not reuse_port:
            log.warning("SO_REUSEPORT is not available here; the workers share one socket")
        self.reuse_port = reuse_port
        sets = count if reuse_port else 1
        self._all: list[socket.socket] = []
        try:
            http = bind_sockets(config.http, sets, reuse_port)
            self._all += [s for group in http for s in group]
            tunnel: list[list[socket.socket]] = [[] for _ in range(sets)]
            if config.tunnel.strip().lower() != "none":
                tunnel = bind_sockets(config.tunnel, sets, reuse_port)
                self._all += [s for group in tunnel for s in group]
        except BaseException:
            self.close_sockets()
            raise
        self.workers = [
            _Worker(i, {"http": http[i % sets], "tunnel": tunnel[i % sets]}) for i in range(count)
        ]
        self.http = http[0][0].getsockname()[:2]
        self.tunnel = tunnel[0][0].getsockname()[:2] if tunnel[0] else None
        # A pipe nobody writes to: workers inherit the read end and see EOF when the
        # supervisor is gone (router/__main__.py). Not PR_SET_PDEATHSIG: that fires when the
        # *thread* that spawned the child exits, and trio spawns from its worker threads.
        self._alive = os.pipe()
        self.stopping = False
        self._stopped = trio.Event()
        self.gave_up = False
        self.restart_base = RestartPolicy.base  # seconds before the first restart

    def close_sockets(self) -> None:
        for sock in self._all:
            sock.close()
        self._all = []

    def close(self) -> None:
        """Everything the supervisor holds (workers see the pipe's EOF)."""
        self.close_sockets()
        for fd in self._alive:
            with contextlib.suppress(OSError):
                os.close(fd)

    def command(self, worker: _Worker, *, restarted: bool = False) -> list[str]:
        args = [sys.executable, "-m", "router", *self.argv]
        args += ["--worker-id", f"{self.run_id}/{worker.index}"]
        if restarted:  # it waits for helpers to re-cover it before taking users
            args.append("--worker-restarted")
        args += ["--worker-count", str(self.count), "--worker-parent-fd", str(self._alive[0])]
        for name, socks in worker.sockets.items():
            if socks:
                fds = ",".join(str(s.fileno()) for s in socks)
                args += ["--inherit-fd", f"{name}={fds}"]
        return args

    async def run(self) -> int:
        scheme = "https://" if self.config.tls_cert else "http://"
        tunnel = "none" if self.tunnel is None else format_address(*self.tunnel)
        log.info(
            "front end on %s%s, tunnel port on %s: %d workers (%s)",
            scheme,
            format_address(*self.http),
            tunnel,
            self.count,
            "SO_REUSEPORT" if self.reuse_port else "one shared socket",
        )
        if getattr(self.config, "front_end_tunnels", False):
            # Its POST, PUTs and GETs come on connections of their own, which the kernel hands
            # to any worker; a session lives in the worker that opened it.
            log.info(
                "httpsock tunnels (http://, https://) need --workers 1: a session's requests "
                "would reach different workers; backends should dial tcp://, tls:// or ws://"
            )
        wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        with trio.open_signal_receiver(*wanted) as signals:
            async with trio.open_nursery() as nursery:
                done = trio.Event()

                async def keep_all() -> None:
                    async with trio.open_nursery() as keepers:
                        for worker in self.workers:
                            keepers.start_soon(self._keep, worker)
                    done.set()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(keep_all)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        log.info("SIGHUP: reloading every worker")
                        self._signal_all(signal.SIGHUP)
                        continue
                    log.info("%s: draining every worker", signal.Signals(signum).name)
                    self.stop()
                    break
                # Bounded: a worker stuck past its own drain is killed.
                with trio.move_on_after(2 * self.config.drain_timeout + 10):
                    await done.wait()
                for worker in self.workers:
                    if worker.process is not None and worker.process.poll() is None:
                        log.warning("worker %d did not stop in time; killing it", worker.index)
                        worker.process.kill()
                await done.wait()
        self.close_sockets()
        log.info("supervisor stopped")
        return 1 if self.gave_up else 0

    def stop(self) -> None:
        """Drain: no new connections reach the port (our copies close), workers finish."""
        self.stopping = True
        self._stopped.set()
        self.close_sockets()
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(signum)

    async def _keep(self, worker: _Worker) -> None:
        policy = RestartPolicy(base=self.restart_base)
        restarted = False
        while not self.stopping:
            fds = [s.fileno() for socks in worker.sockets.values() for s in socks]
            fds.append(self._alive[0])
            started = trio.current_time()
            try:
                process = await trio.lowlevel.open_process(
                    self.command(worker, restarted=restarted),
                    stdin=subprocess.DEVNULL,
                    pass_fds=fds,
                )
            except OSError as exc:
                log.error("worker %d: cannot start: %s", worker.index, exc)
                self.gave_up = True
                self.stop()
                return
            worker.process = process
            log.info("worker %d started (pid %d)", worker.index, process.pid)
            with trio.CancelScope(shield=True):  # reaped on every way out
                status = await process.wait()
            if self.stopping:
                log.info("worker %d (pid %d) exited (%s)", worker.index, process.pid, status)
                return
            delay = policy.exited(trio.current_time() - started)
            how = _describe_exit(status)
            if delay is None:
                log.error(
                    "worker %d %s %d times in a row within %g s of starting; giving up",
                    worker.index,
                    how,
                    policy.failures,
                    START_WINDOW,
                )
                self.gave_up = True
                self.stop()
                return
            log.warning(
                "worker %d (pid %d) %s; restarting it in %.1f s",
                worker.index,
                process.pid,
                how,
                delay,
            )
            with trio.move_on_after(delay):  # a stop ends the wait
                await self._stopped.wait()
            restarted = True


def _describe_exit(status: int) -> str:
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def supervise(config: RouterConfig, argv: Sequence[str], count: int) -> int:
    """The supervisor's whole life; 2 when the ports cannot be bound."""
    try:
        supervisor = Supervisor(config, argv, count)
    except (OSError, ConfigError) as exc:
        print(f"router: cannot listen: {exc}", file=sys.stderr)
        return 2
    try:
        return trio.run(supervisor.run)
    finally:
        supervisor.close()
