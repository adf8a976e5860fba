"""``python -m tests.apps.serve_asyncio ROUTER [--uvloop]``: ``ptth.serve`` awaited from asyncio.

Serves ``tests.apps.starlette_app:app`` in this process with ``asyncio.run`` (or ``uvloop.run``)
awaiting ``ptth.serve(app, ROUTER)`` as an ordinary asyncio task. It prints the running loop's
class and ``id()`` (the app's ``/loop`` answers the same when it runs on this very loop). SIGTERM
cancels the task; the script prints how ``serve`` ended and exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import ptth
from tests.apps.starlette_app import app


async def main(router: str) -> None:
    loop = asyncio.get_running_loop()
    kind = type(loop)
    print(f"script loop: {kind.__module__}.{kind.__qualname__} id={id(loop)}", flush=True)
    options = ptth.BackendOptions(instance="asyncio-in-process", drain_timeout=5)
    task = asyncio.create_task(ptth.serve(app, router, options=options))
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        print("serve ended: cancelled", flush=True)
    else:
        print("serve ended: returned", flush=True)


if __name__ == "__main__":
    router_addr = sys.argv[1]
    if "--uvloop" in sys.argv[2:]:
        import uvloop

        uvloop.run(main(router_addr))
    else:
        asyncio.run(main(router_addr))
