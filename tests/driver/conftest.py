"""Driver tests run on both anyio backends, through anyio's pytest plugin.

The suite runs with pytest-trio's ``trio_mode``, which marks *every* coroutine test as a trio
test and then runs it with ``trio.run`` itself, so the ``asyncio`` parametrization of an
``@pytest.mark.anyio`` test would silently run under trio too. Tests marked ``anyio`` are
therefore taken back from pytest-trio here, after it marked them; ``test_driver.py`` checks that
each test really runs on the loop it names. (Async fixtures would still be claimed by
pytest-trio's fixture hook: these tests use none.)
"""

from __future__ import annotations

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("anyio") is not None:
            item.own_markers[:] = [mark for mark in item.own_markers if mark.name != "trio"]
