"""De-identifying files: read what the plan needs of a header (native), plan
(``dicomrelay.deidentify``), and write the result with the header rewriter,
whose output is the new header followed by the source's pixel bytes."""

from __future__ import annotations

import hashlib
import hmac
import importlib
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomrelay._native import InstanceInfo, header_values_file
from dicomrelay.deidentify import (
    InstanceHeader,
    Option,
    SafePrivate,
    check_project_key,
    plan_deidentification,
    tags_to_read,
)
from dicomrelay.errors import ConfigurationError

__all__ = [
    "DeidentifiedFile",
    "deidentify_file",
    "new_uid",
    "output_path",
    "parse_safe_private",
    "read_header",
    "read_project_key",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class DeidentifiedFile:
    source: Path
    output: Path
    digest: str
    """The output file's digest, as the rewriter computed it on the way out."""


def read_project_key(path: Path) -> bytes:
    """The project key in ``path``: its bytes, without surrounding whitespace
    (a key made with ``openssl rand -hex 32 > key`` ends with a newline)."""
    key = path.read_bytes().strip()
    try:
        return check_project_key(key)
    except ConfigurationError as error:
        raise ConfigurationError(f"{path}: {error}") from None


def parse_safe_private(text: str, *, source: str = "safe private list") -> tuple[SafePrivate, ...]:
    """A safe private list: one attribute a line, ``GROUP,CREATOR,ELEMENT`` in
    hexadecimal as PS3.15 Table E.3.10-1 writes them (``0019,GEMS_ACQU_01,23``
    for (0019,xx23)); ``#`` starts a comment."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            group, creator, element = int(parts[0], 16), parts[1], int(parts[2], 16)
            if len(parts) != 3 or not creator or group % 2 == 0 or group > 0xFFFF:
                raise ValueError(line)
            if not 0 <= element <= 0xFF:
                raise ValueError(line)
        except (ValueError, IndexError):
            raise ConfigurationError(
                f"{source}:{number}: not GROUP,CREATOR,ELEMENT (odd group, element 00-FF): {line!r}"
            ) from None
        entries.append(SafePrivate(group=group, creator=creator, element=element))
    return tuple(entries)


def read_header(path: Path, options: Collection[Option]) -> InstanceHeader:
    values, creators = header_values_file(path, sorted(tags_to_read(options)))
    return InstanceHeader(values=values, private_creators=creators)


def new_uid(key: bytes, uid: str) -> str:
    """The rewrite contract's UID remapping, for naming output files."""
    digest = hmac.new(key, uid.encode("ascii"), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def output_path(out: Path, info: InstanceInfo, key: bytes, options: Collection[Option]) -> Path:
    """``OUT/study/series/instance.dcm`` named by the output's UIDs, never by
    the source's path, whose names may identify the patient."""
    keep = Option.RETAIN_UIDS in options

    def name(uid: str | None, fallback: str) -> str:
        if not uid:
            return fallback
        return uid if keep else new_uid(key, uid)

    return (
        out
        / name(info.study_instance_uid, "no-study")
        / name(info.series_instance_uid, "no-series")
        / (name(info.sop_instance_uid, "no-instance") + ".dcm")
    )


def _rewrite_file() -> Any:
    # The header rewriter lives in the native extension's Python facade.
    return importlib.import_module("dicomrelay.rewrite").rewrite_file


def deidentify_file(
    source: Path,
    out: Path,
    info: InstanceInfo,
    *,
    options: Collection[Option],
    key: bytes,
    safe_private: Iterable[SafePrivate] = (),
    allow_burned_in: bool = False,
) -> DeidentifiedFile:
    """De-identify one file into ``out`` (see ``output_path``), written under a
    temporary name and renamed, so a reader never sees half a file. Raises
    BurnedInAnnotation for an instance refused, DicomParseError for one that
    cannot be read."""
    plan = plan_deidentification(
        read_header(source, options),
        options,
        key,
        safe_private=safe_private,
        allow_burned_in=allow_burned_in,
    )
    target = output_path(out, info, key, options)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.partial")
    try:
        written = _rewrite_file()(source, temporary, plan.edits)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return DeidentifiedFile(source=source, output=target, digest=str(written.digest))
