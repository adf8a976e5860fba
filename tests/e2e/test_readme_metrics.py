"""The README's metric table against a real scrape: a metric the router exports without a README
row fails here, and so does a README row naming a metric that no longer exists."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.test_admin import ptth_backend
from tests.support import start_router

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_metric_names() -> set[str]:
    """Every `ptth_*` name in the first column of the README's metric table."""
    names: set[str] = set()
    in_table = False
    for line in README.read_text().splitlines():
        if line.startswith("| metric | type |"):
            in_table = True
            continue
        if in_table:
            if not line.startswith("|"):
                break
            first = line.split("|")[1]
            names.update(re.findall(r"`(ptth_\w+)`", first))
    return names


def scraped_names(text: str) -> set[str]:
    """The exposition names of every family in a /metrics page (`# TYPE` lines)."""
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ptth_")}


def test_readme_table_is_found() -> None:
    assert len(readme_metric_names()) >= 10, "README.md lost its '| metric | type |' table"


@pytest.mark.timeout(30)
async def test_every_exported_metric_has_a_readme_row_and_back() -> None:
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        backend = await ptth_backend(nursery, router, "docs")
        async with httpx.AsyncClient(base_url=router.url) as client:
            assert (await client.get("/a")).status_code == 200
        async with httpx.AsyncClient(base_url=router.addresses.admin_url) as admin:
            response = await admin.get("/metrics")
        assert response.status_code == 200
        exported = scraped_names(response.text)
        await backend.stop()
        nursery.cancel_scope.cancel()
    documented = readme_metric_names()
    assert exported, "the scrape had no ptth_ metric at all"
    assert not exported - documented, (
        f"exported but missing from README.md: {exported - documented}"
    )
    assert not documented - exported, f"in README.md but not exported: {documented - exported}"
