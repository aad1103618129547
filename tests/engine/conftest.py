"""Every async test here runs on asyncio and on uvloop; each test gets a CA of its own."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from .helpers import Pki

BACKENDS = [
    pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return cast(tuple[str, dict[str, bool]], request.param)


@pytest.fixture
def orgs(tmp_path: Path) -> Pki:
    """A trusted CA; ``orgs.identity("RX1")`` issues an organisation certificate."""
    return Pki(tmp_path / "pki")
