"""A patient link in a real browser (headless Chromium), at a desktop's and
a phone's size: the study's page as the browser builds it (its facts, each
series with a preview the browser fetched through the link, the download),
and the pages of a revoked and an expired link. Screenshots go to
``$DICOMRELAY_ARTIFACTS/screenshots`` (CI keeps them)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np

from .chromium import DESKTOP, PHONE, chromium, dump_dom, screenshot, screenshots_dir
from .helpers import Pki
from .link_helpers import IMAGES, SERIES, STUDY_DESCRIPTION, link_audit, share, shared_study
from .web_helpers import read_picture, size_of


def looks_drawn(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A screenshot of the expected size that shows something (not one flat colour)."""
    found, decoded = read_picture(path.read_bytes())
    assert found == "PNG"
    assert size_of(decoded) == size
    pixels = decoded[:, :, :3]
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    return pixels


def test_a_link_in_chromium_at_desktop_and_phone_sizes(tmp_path: Path, orgs: Pki) -> None:
    chromium()
    shots = screenshots_dir(tmp_path / "screenshots")
    with shared_study(tmp_path, orgs) as shared:
        lines = share(shared.config, shared.study)
        url, link_id = lines[-1], lines[0].split()[1]
        revoked, expired = (share(shared.config, shared.study) for _ in range(2))
        share(shared.config, "revoke", revoked[0].split()[1])
        with sqlite3.connect(tmp_path / "data" / "ledger.sqlite") as db:
            db.execute(
                "UPDATE share_links SET expires = ? WHERE id = ?",
                (time.time() - 60, expired[0].split()[1]),
            )

        dom = dump_dom(url)
        assert STUDY_DESCRIPTION in dom
        assert "27 November 2026" in dom
        assert f"{IMAGES} images in {len(SERIES)} series" in dom
        for _, _, _, description in SERIES:
            assert description in dom
        assert 'href="' in dom
        assert "/study.zip" in dom
        assert "Download all images" in dom
        assert dom.count("<img ") == len(SERIES) - 1  # the report has no picture

        for name, size in (("desktop", DESKTOP), ("phone", PHONE)):
            path = screenshot(url, shots / f"link-study-{name}.png", size)
            pixels = looks_drawn(path, size)
            # The download button (#0b5fff) is drawn, and within the window's width.
            button = np.all(pixels == (11, 95, 255), axis=-1)
            assert button.sum() > 1000, name
            columns = np.flatnonzero(button.any(axis=0))
            assert columns.min() > 0, name
            assert columns.max() < size[0] - 1, name
        phone_dom = dump_dom(url, PHONE)
        assert STUDY_DESCRIPTION in phone_dom

        for name, link, words in (
            ("revoked", revoked[-1], "This link was withdrawn"),
            ("expired", expired[-1], "This link has expired"),
        ):
            page = dump_dom(link, PHONE)
            assert words in page
            assert STUDY_DESCRIPTION not in page
            assert "<img" not in page
            for size_name, size in (("phone", PHONE), ("desktop", DESKTOP)):
                looks_drawn(screenshot(link, shots / f"link-{name}-{size_name}.png", size), size)

    # The browser fetched every series' preview through the link (the report has none to show).
    rows = link_audit(tmp_path)
    previews = [r for r in rows if r[0] == link_id and "preview of series" in r[5]]
    pages = [r for r in rows if r[0] == link_id and "page of study" in r[5]]
    assert len(pages) == 4
    assert len(previews) >= 3 * 2
    assert {r[3] for r in previews} == {"127.0.0.1"}
