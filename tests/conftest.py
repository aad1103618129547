"""Shared fixtures: pydicom's bundled files and a benchmark-sized CT slice."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_builders import make_ct_slice, pydicom_test_files


@pytest.fixture(scope="session")
def pydicom_files() -> list[Path]:
    return pydicom_test_files()


@pytest.fixture(scope="session")
def ct_slice() -> bytes:
    """512x512 16-bit CT slice, explicit VR little endian, about 513 KiB."""
    return make_ct_slice(seed=0)


@pytest.fixture(scope="session")
def ct_slice_path(ct_slice: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ct") / "ct_slice.dcm"
    path.write_bytes(ct_slice)
    return path
