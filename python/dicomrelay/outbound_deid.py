"""De-identification on the way out: a study whose send rule de-identifies is
rewritten, instance by instance, into its transfer's spool (``spool.py``),
and only the rewritten copies are queued. An instance whose pixels may show
who the patient is (``deidentify.burned_in_refusal``) is not rewritten unless
the rule allows it: its original bytes are copied into the node's quarantine
folder instead, to be held (``quarantine.py``) until an operator releases or
deletes it.

``spool_study`` runs on a worker thread, the whole study at once: each
instance is mapped (no copy), its header read and planned
(``deidentify.plan_deidentification``, a pure function), the new header
written by the Rust rewriter and its pixel data copied by the kernel; then
the spool is made durable once and read back by the scanner on every core
for the digests the transfer sends.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dicomrelay._native import Hasher, InstanceInfo, header_values
from dicomrelay.confidentiality_profile import Option
from dicomrelay.config import DigestName
from dicomrelay.deid_files import parse_safe_private, read_project_key
from dicomrelay.deidentify import (
    InstanceHeader,
    SafePrivate,
    check_options,
    plan_deidentification,
    tags_to_read,
)
from dicomrelay.edits import Edit
from dicomrelay.errors import BurnedInAnnotation
from dicomrelay.folders import sync_folder
from dicomrelay.policy import Deidentify
from dicomrelay.rewrite import copy_range
from dicomrelay.spool import Region, Spool, mapped

__all__ = [
    "HeldCopy",
    "Opener",
    "SourceInstance",
    "SpooledStudy",
    "Transform",
    "open_file_region",
    "spool_study",
]


@dataclass(frozen=True, slots=True)
class SourceInstance:
    """One instance of a study to send: the scanner's reading of its header,
    and where its bytes are (its file, or ``store:`` and its digest)."""

    info: InstanceInfo
    where: str


PLANS_KEPT = 256  # distinct headers whose plans one study keeps

# Opens a source's bytes, on the worker thread: a descriptor the caller closes.
Opener = Callable[[SourceInstance], Region]


def open_file_region(source: SourceInstance) -> Region:
    fd = os.open(source.where, os.O_RDONLY | os.O_CLOEXEC)
    return Region(fd, 0, os.fstat(fd).st_size)


@dataclass(frozen=True, kw_only=True, slots=True)
class Transform:
    """A send rule's de-identification, ready to apply: its options checked,
    its key and safe private list read."""

    options: frozenset[Option]
    key: bytes
    safe_private: tuple[SafePrivate, ...] = ()
    allow_burned_in: bool = False

    @classmethod
    def of(cls, rule: Deidentify, *, allow_burned_in: bool = False) -> Transform:
        """``allow_burned_in``: the operator released this instance after
        looking at its pixels (the rule's own setting applies as well)."""
        safe: tuple[SafePrivate, ...] = ()
        if rule.safe_private is not None:
            text = rule.safe_private.read_text()
            safe = parse_safe_private(text, source=str(rule.safe_private))
        return cls(
            options=check_options([Option(o) for o in rule.options]),
            key=read_project_key(rule.key_file),
            safe_private=safe,
            allow_burned_in=allow_burned_in or rule.allow_burned_in,
        )


@dataclass(frozen=True, slots=True)
class HeldCopy:
    """An instance held back: its source, why, and its bytes' durable copy."""

    source: SourceInstance
    reason: BurnedInAnnotation
    hold_id: str
    path: Path
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class SpooledStudy:
    spool: Spool
    infos: list[InstanceInfo]  # each spooled instance as the scanner read it, in order
    held: list[HeldCopy]
    origins: list[str]  # each spooled instance's source (its ``where``), in order

    def discard(self) -> None:
        """Undo: the spool and the held copies removed (nothing was recorded)."""
        self.spool.discard()
        for h in self.held:
            h.path.unlink(missing_ok=True)


def spool_study(
    sources: Sequence[SourceInstance],
    opener: Opener,
    transform: Transform | None,
    folder: Path,
    quarantine: Path,
    *,
    digest: DigestName,
    chunk_size: int,
) -> SpooledStudy:
    """Write ``sources`` into a spool in ``folder``: de-identified by
    ``transform`` (None: copied as they are), those it refuses for burned-in
    identity copied into ``quarantine`` instead. Blocking: run it on a worker
    thread."""
    spool = Spool(folder, digest=digest, chunk_size=chunk_size)
    held: list[HeldCopy] = []
    origins: list[str] = []
    tags = sorted(tags_to_read(transform.options)) if transform is not None else []
    plans = _Plans(transform) if transform is not None else None
    try:
        for source in sources:
            region = opener(source)
            try:
                if plans is None:
                    spool.add_copy(region)
                    origins.append(source.where)
                    continue
                with mapped(region) as view:
                    values, creators = header_values(view, tags)
                    try:
                        edits = plans.edits(values, creators)
                    except BurnedInAnnotation as refusal:
                        held.append(_hold(source, refusal, region, view, quarantine, digest))
                        continue
                    spool.add_rewritten(region, view, edits)
                    origins.append(source.where)
            finally:
                os.close(region.fd)
        infos = spool.finish()
        if held:
            sync_folder(quarantine)
    except BaseException:
        SpooledStudy(spool, [], held, []).discard()
        raise
    return SpooledStudy(spool, infos, held, origins)


class _Plans:
    """The transform's plan for each header read. The plan is a pure function
    of the values read, which the slices of a series mostly share: each
    distinct header is planned once."""

    def __init__(self, transform: Transform) -> None:
        self._transform = transform
        self._known: dict[tuple[object, ...], tuple[Edit, ...]] = {}

    def edits(self, values: dict[int, str], creators: dict[int, str]) -> tuple[Edit, ...]:
        """Raises BurnedInAnnotation for an instance whose pixels may show identity."""
        key = (tuple(sorted(values.items())), tuple(sorted(creators.items())))
        known = self._known.get(key)
        if known is None:
            t = self._transform
            header = InstanceHeader(values=values, private_creators=creators)
            known = plan_deidentification(
                header,
                t.options,
                t.key,
                safe_private=t.safe_private,
                allow_burned_in=t.allow_burned_in,
            ).edits
            if len(self._known) < PLANS_KEPT:
                self._known[key] = known
        return known


def _hold(
    source: SourceInstance,
    refusal: BurnedInAnnotation,
    region: Region,
    view: memoryview,
    quarantine: Path,
    digest: DigestName,
) -> HeldCopy:
    """The original bytes, copied (by the kernel) and made durable where the
    quarantine keeps what it holds; digested from the mapping."""
    quarantine.mkdir(parents=True, exist_ok=True)
    hold_id = uuid.uuid4().hex[:12]
    path = quarantine / f"{hold_id}.dcm"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        copy_range(region.fd, fd, region.base, region.length, path)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    hasher = Hasher(digest)
    hasher.update(view)
    return HeldCopy(source, refusal, hold_id, path, hasher.hexdigest(), region.length)
