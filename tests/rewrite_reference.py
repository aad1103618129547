"""The independent half of the rewrite tests: each edit made by pydicom on
its own reading of the input, datasets compared element by element, and group
lengths counted from the output's bytes by a small walker of our own.

Nothing here imports the Rust rewrite; edits are described by the same
dataclasses (plain data) and carried out with pydicom's API.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pydicom.data
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.values import convert_SQ

from dicom_builders import layout
from dicomrelay.rewrite import (
    AddItem,
    Edit,
    Empty,
    NewElement,
    RemapUids,
    Remove,
    RemovePrivate,
    Replace,
    Set,
)

# What RemapUids(tags=None) keeps: UIDs naming a class, scheme or standard.
CLASS_UIDS = frozenset(
    {
        0x00041510,
        0x00041512,
        0x00080016,
        0x0008001A,
        0x0008001B,
        0x00080062,
        0x0008010C,
        0x0008010D,
        0x00080117,
        0x00080118,
        0x00081150,
        0x0008115A,
        0x0018100B,
        0x04000010,
        0x04000510,
    }
)
NUMERIC_VRS = {"US": int, "SS": int, "UL": int, "SL": int, "UV": int, "SV": int}
FLOAT_VRS = {"FL", "FD"}


def bundled(name: str) -> Path:
    """One of pydicom's bundled test files."""
    return Path(cast(str, pydicom.data.get_testdata_file(name)))


def new_uid(key: bytes, old: str) -> str:
    digest = hmac.new(key, old.encode("ascii"), "sha256").digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def _python_value(vr: str, value: bytes | str) -> Any:
    """A value as pydicom holds it, for an edit's bytes or text."""
    if isinstance(value, bytes):
        return value
    if vr in NUMERIC_VRS:
        numbers = [int(v) for v in value.split("\\")] if value else []
        return numbers[0] if len(numbers) == 1 else numbers
    if vr in FLOAT_VRS:
        floats = [float(v) for v in value.split("\\")] if value else []
        return floats[0] if len(floats) == 1 else floats
    return value


def datasets(ds: Dataset, everywhere: bool) -> Iterator[Dataset]:
    """``ds`` and, with ``everywhere``, every item of every sequence in it."""
    yield ds
    if not everywhere:
        return
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                yield from datasets(item, True)


def _set(ds: Dataset, tag: int, vr: str, value: bytes | str) -> None:
    ds.add_new(tag, vr, _python_value(vr, value))


def _items(elements: tuple[NewElement, ...]) -> Dataset:
    item = Dataset()
    for tag, vr, value in elements:
        if vr == "SQ":
            assert isinstance(value, tuple)
            item.add_new(tag, "SQ", Sequence([_items(e) for e in value]))
        else:
            assert isinstance(value, bytes | str)
            _set(item, tag, vr, value)
    return item


def apply_with_pydicom(ds: Dataset, edit: Edit) -> None:
    """Make ``edit`` on ``ds`` as a pydicom user would."""
    match edit:
        case Set(tag=tag, value=value, vr=vr):
            _set(ds, tag, vr, value)
        case Replace(tag=tag, value=value, vr=vr, everywhere=everywhere):
            for d in list(datasets(ds, everywhere)):
                if tag in d:
                    _set(d, tag, vr, value)
        case Empty(tag=tag, everywhere=everywhere):
            for d in list(datasets(ds, everywhere)):
                if tag in d:
                    d[tag].value = Sequence() if d[tag].VR == "SQ" else None
        case Remove(tag=tag, mask=mask, everywhere=everywhere):
            for d in list(datasets(ds, everywhere)):
                for t in [t for t in d.keys() if t & mask == tag & mask]:  # noqa: SIM118
                    del d[t]
        case RemovePrivate(keep=keep, everywhere=everywhere):
            for d in list(datasets(ds, everywhere)):
                for t in [t for t in d.keys() if t.group % 2 and t not in keep]:  # noqa: SIM118
                    del d[t]
        case RemapUids(tags=tags, key=key, everywhere=everywhere):
            for d in list(datasets(ds, everywhere)):
                for elem in list(d):
                    chosen = elem.tag not in CLASS_UIDS if tags is None else elem.tag in tags
                    if elem.VR == "UI" and chosen and elem.value:
                        _remap(elem, key)
            remapped = tags is None or 0x00080018 in tags
            if (
                remapped
                and ds.get("SOPInstanceUID")
                and "MediaStorageSOPInstanceUID" in ds.file_meta
            ):
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        case AddItem(sequence_tag=tag, elements=elements):
            if tag not in ds:
                ds.add_new(tag, "SQ", Sequence())
            ds[tag].value.append(_items(elements))


def read_private_sequences(ds: Dataset) -> None:
    """Read private values that hold items as sequences, as the scanner does
    in implicit VR (pydicom leaves them as bytes of VR UN)."""
    if not ds.original_encoding[0]:
        return
    for d in list(datasets(ds, True)):
        for elem in list(d):
            value = elem.value
            if elem.VR == "UN" and elem.tag.group % 2 and value[:4] == b"\xfe\xff\x00\xe0":
                d.add_new(elem.tag, "SQ", convert_SQ(value, True, True))


def _remap(elem: DataElement, key: bytes) -> None:
    values = elem.value if elem.VM > 1 else [elem.value]
    mapped = [new_uid(key, str(v)) if str(v) else "" for v in values]
    elem.value = mapped if elem.VM > 1 else mapped[0]


def differences(a: Dataset, b: Dataset, *, compare_vr: bool, path: str = "") -> list[str]:
    """Where two datasets differ, element by element (group lengths aside:
    pydicom keeps the input's, the rewrite recomputes them)."""
    out: list[str] = []
    tags_a = sorted(t for t in a.keys() if t.element != 0)  # noqa: SIM118
    tags_b = sorted(t for t in b.keys() if t.element != 0)  # noqa: SIM118
    if tags_a != tags_b:
        extra, missing = set(tags_a) - set(tags_b), set(tags_b) - set(tags_a)
        return [
            f"{path}: tags differ: only in ours {sorted(extra)}, "
            f"only in pydicom's {sorted(missing)}"
        ]
    for tag in tags_a:
        x, y = a[tag], b[tag]
        where = f"{path}/{tag}"
        if compare_vr and x.VR != y.VR:
            out.append(f"{where}: VR {x.VR} != {y.VR}")
        if x.VR == "SQ" and y.VR == "SQ":
            if len(x.value) != len(y.value):
                out.append(f"{where}: {len(x.value)} items != {len(y.value)}")
                continue
            for n, (i, j) in enumerate(zip(x.value, y.value, strict=True)):
                out += differences(i, j, compare_vr=compare_vr, path=f"{where}[{n}]")
        elif _normal(x.value) != _normal(y.value):
            out.append(f"{where}: {x.value!r} != {y.value!r}")
    return out


def _normal(value: Any) -> Any:
    # An empty value reads back as None or "" depending on the VR.
    if value in (None, "", b"") or (isinstance(value, list | Sequence) and not value):
        return None
    return value


def top_level_elements(data: bytes) -> list[tuple[int, int, int]]:
    """(tag, start, end) of each top-level element, by the tests' own walker
    (none for a deflated dataset)."""
    lay = layout(data)
    if lay.deflated:
        return []
    starts = [lay.dataset_offset, *lay.top_level_ends[:-1]]
    order = lay.encoding.order
    return [
        (
            (struct.unpack_from(order + "H", data, s)[0] << 16)
            | struct.unpack_from(order + "H", data, s + 2)[0],
            s,
            e,
        )
        for s, e in zip(starts, lay.top_level_ends, strict=False)
    ]


def group_length_errors(data: bytes) -> list[str]:
    """Every group length in the meta group and at the top level that does
    not count the bytes of the rest of its group."""
    errors = []
    lay = layout(data)
    meta: list[tuple[int, int, int]] = []
    pos = 132 if data[128:132] == b"DICM" else 0
    for end in lay.meta_ends:
        meta.append((0x00020000 | struct.unpack_from("<H", data, pos + 2)[0], pos, end))
        pos = end
    for elements, little in ((meta, True), (top_level_elements(data), lay.encoding.little)):
        for n, (tag, start, end) in enumerate(elements):
            if tag & 0xFFFF or end - start != 12:  # a UL group length element
                continue
            value = struct.unpack_from("<I" if little else ">I", data, end - 4)[0]
            group_end = next(
                (s for t, s, _ in elements[n + 1 :] if t >> 16 != tag >> 16), elements[-1][2]
            )
            if value != group_end - end:
                errors.append(
                    f"({tag >> 16:04X},0000) says {value}, the group holds {group_end - end}"
                )
    return errors
