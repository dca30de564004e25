from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vesper.store import Store, open_store


@pytest.fixture(params=["mem", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The same store tests run against both storage backends."""
    url = "mem://" if request.param == "mem" else f"sqlite:///{tmp_path}/s.db"
    s = open_store(url, "A")
    yield s
    s.close()


@pytest.fixture
def file_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/node.db"
