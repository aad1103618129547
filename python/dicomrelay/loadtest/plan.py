"""How big a load test is: the studies it generates and the disk they take.

Without ``--count`` a run is as large as fits in ``DISK_BUDGET`` of temporary
files, counting each image twice (the sender's source and the receiver's
stored copy), each rounded up to a filesystem block.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from dicomrelay import synth
from dicomrelay.errors import DicomrelayError
from dicomrelay.loadtest import DISK_BUDGET


@dataclass(frozen=True)
class StudyPlan:
    profile: str
    images: int


# ``mixed``: an image exchange's traffic, studies in the proportions they come
# in, each of its modality's typical size. In every 12 studies: 5 radiographs
# (CR or DX, 2 images each), 2 ultrasounds (40 images), 2 CTs (300 slices),
# 1 MR (200 images) and 2 studies of small objects (20 key images, scanned
# documents or screenshots). Radiographs are the most frequent studies; CT and
# MR carry most of the images and bytes.
MIXED_CYCLE: tuple[StudyPlan, ...] = (
    StudyPlan("cr", 2),
    StudyPlan("ct", 300),
    StudyPlan("dx", 2),
    StudyPlan("us", 40),
    StudyPlan("small", 20),
    StudyPlan("cr", 2),
    StudyPlan("mr", 200),
    StudyPlan("dx", 2),
    StudyPlan("us", 40),
    StudyPlan("cr", 2),
    StudyPlan("ct", 300),
    StudyPlan("small", 20),
)
_BLOCK = 4096
_HEADER = 1024  # an upper bound on a synthetic instance's header


def image_bytes(profile: str) -> int:
    """Disk one synthetic image of ``profile`` takes, as one file."""
    size = synth.PROFILES[profile].pixel_bytes + _HEADER
    return -(-size // _BLOCK) * _BLOCK


def plan_studies(
    profile: str, count: int | None, study_size: int, budget: int = DISK_BUDGET
) -> list[StudyPlan]:
    """The studies to generate: ``count`` images, or as many as the budget
    holds, ``study_size`` to a study (``mixed`` goes round ``MIXED_CYCLE``,
    no study larger than ``study_size``)."""
    plan: list[StudyPlan] = []
    images = used = 0
    while True:
        if profile == "mixed":
            typical = MIXED_CYCLE[len(plan) % len(MIXED_CYCLE)]
            name, size = typical.profile, min(study_size, typical.images)
        else:
            name, size = profile, study_size
        if count is not None:
            size = min(size, count - images)
        else:
            size = min(size, (budget - used) // (2 * image_bytes(name)))
        if size <= 0:
            return plan
        plan.append(StudyPlan(name, size))
        images += size
        used += 2 * size * image_bytes(name)


def footprint(plan: list[StudyPlan]) -> int:
    """Bytes of temporary files the plan writes: sources and received copies."""
    return sum(2 * s.images * image_bytes(s.profile) for s in plan)


def check_room(where: Path, needed: int) -> None:
    free = shutil.disk_usage(where).free
    if needed > free:
        raise DicomrelayError(
            f"not enough room in {where}: the run needs {needed / 1e9:.2f} GB,"
            f" {free / 1e9:.2f} GB are free (choose a smaller --count or another --workdir)"
        )
