"""The rewrite contract's edit semantics on a pydicom Dataset: a reference
applier for the de-identification tests, and the oracle the Rust rewriter is
compared with. Edits apply in order; "everywhere" reaches every item of every
sequence at any depth."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Sequence
from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag

from dicomrelay.deidentify import InstanceHeader
from dicomrelay.edits import (
    AddItem,
    Edit,
    Empty,
    ItemElement,
    RemapUids,
    Remove,
    RemovePrivate,
    Replace,
    Set,
)


def remapped_uid(key: bytes, uid: str) -> str:
    """The contract's rule, written out independently of the planner."""
    digest = hmac.new(key, uid.encode("ascii"), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def datasets(ds: Dataset, everywhere: bool = True) -> Iterator[Dataset]:
    """``ds`` and, when ``everywhere``, every item of every sequence inside it."""
    yield ds
    if not everywhere:
        return
    for elem in list(ds):
        if elem.VR == "SQ" and elem.value is not None:
            for item in elem.value:
                yield from datasets(item)


def _set_value(elem: DataElement, value: bytes | str) -> None:
    if isinstance(value, str) and "\\" in value:
        elem.value = value.split("\\")
    else:
        elem.value = value


def _new_element(tag: int, vr: str, value: object) -> DataElement:
    if vr == "SQ":
        assert isinstance(value, tuple)
        return DataElement(tag, "SQ", DicomSequence([_item(i) for i in value]))
    elem = DataElement(tag, vr, None)
    _set_value(elem, value)  # type: ignore[arg-type]
    return elem


def _item(elements: tuple[ItemElement, ...]) -> Dataset:
    item = Dataset()
    for tag, vr, value in elements:
        item.add(_new_element(tag, vr, value))
    return item


def apply_edit(ds: FileDataset, edit: Edit) -> None:
    if isinstance(edit, Set):
        if edit.tag in ds:
            _set_value(ds[edit.tag], edit.value)
        else:
            ds.add(_new_element(edit.tag, edit.vr, edit.value))
    elif isinstance(edit, Replace):
        for d in datasets(ds, edit.everywhere):
            if edit.tag in d:
                _set_value(d[edit.tag], edit.value)
    elif isinstance(edit, Empty):
        for d in datasets(ds, edit.everywhere):
            if edit.tag in d:
                elem = d[edit.tag]
                elem.value = DicomSequence() if elem.VR == "SQ" else None
    elif isinstance(edit, Remove):
        want = edit.tag & edit.mask
        for d in datasets(ds, edit.everywhere):
            for tag in [e.tag for e in d if e.tag & edit.mask == want]:
                del d[tag]
        if ds.file_meta is not None and want >> 16 == 2:
            for tag in [e.tag for e in ds.file_meta if e.tag & edit.mask == want]:
                del ds.file_meta[tag]
    elif isinstance(edit, RemovePrivate):
        for d in datasets(ds, edit.everywhere):
            for tag in [e.tag for e in d if e.tag.is_private and e.tag not in edit.keep]:
                del d[tag]
    elif isinstance(edit, RemapUids):
        _remap(ds, edit)
    elif isinstance(edit, AddItem):
        if edit.sequence_tag not in ds:
            ds.add(DataElement(edit.sequence_tag, "SQ", DicomSequence()))
        ds[edit.sequence_tag].value.append(_item(edit.elements))
    else:  # pragma: no cover - the union is closed
        raise TypeError(edit)


def _remap(ds: FileDataset, edit: RemapUids) -> None:
    assert edit.tags is not None, "the planner names its tags"
    meta = [ds.file_meta] if ds.file_meta is not None else []
    for d in [*meta, *datasets(ds, edit.everywhere)]:
        for elem in d:
            if elem.tag in edit.tags and elem.VR == "UI" and elem.value:
                values = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
                new = [remapped_uid(edit.key, str(v).rstrip("\x00 ")) for v in values if v]
                elem.value = new if len(new) > 1 else new[0]


def apply_edits(ds: FileDataset, edits: Sequence[Edit]) -> FileDataset:
    for edit in edits:
        apply_edit(ds, edit)
    return ds


def header_of(ds: Dataset, tags: frozenset[int]) -> InstanceHeader:
    """What a header reader hands the planner: top-level text values and private creators."""
    values: dict[int, str] = {}
    creators: dict[int, str] = {}
    for elem in ds:
        tag = int(elem.tag)
        if Tag(tag).is_private_creator and isinstance(elem.value, str | bytes):
            text = elem.value.decode("latin-1") if isinstance(elem.value, bytes) else elem.value
            if text.strip(" \x00"):
                creators[tag] = text.strip(" \x00")
        if tag in tags and elem.VR not in ("SQ", "UN") and elem.value not in (None, ""):
            values[tag] = text_of(elem).strip(" \x00")
    return InstanceHeader(values=values, private_creators=creators)


def text_of(elem: DataElement) -> str:
    """An element's value as its text would be written (multiple values joined by \\)."""
    value = elem.value
    items = value if isinstance(value, MultiValue | list) else [value]
    return "\\".join(str(v) for v in items)


def read(path: Path) -> FileDataset:
    return pydicom.dcmread(path, force=True)
