"""Header rewriting: edits applied to a DICOM Part 10 instance in Rust, the
pixel data never copied.

>>> from dicomrelay.rewrite import Remove, Set, rewrite_file
>>> rewrite_file(src, dst, [Set(tag=0x00100020, value="LOCAL123", vr="LO"),
...                         Remove(tag=0x00081030)])

Edits apply in order. Each names its element by tag (``0x00100020``); values
are ``str`` (encoded in the dataset's character set; numbers as decimal text
for binary VRs such as US: ``"512"``) or ``bytes`` as they are to be stored
(binary VRs in little endian: a big endian dataset gets them swapped). Values
are padded to an even length (a space; NUL for UI, OB and UN). Every transfer
syntax the scanner reads is kept as it is: implicit VR stays implicit (the VR
of an edit then only decides padding), big endian stays big endian, a
deflated dataset is inflated, edited and deflated again. Lengths of edited
sequences and items are recomputed (undefined lengths stay undefined), and so
are group lengths (gggg,0000) and the file meta group's (0002,0000).

An edit that cannot be applied raises :class:`~dicomrelay.errors.RewriteError`
naming the tag; input the scanner refuses raises
:class:`~dicomrelay.errors.DicomParseError`.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

from dicomrelay import _native
from dicomrelay.errors import RewriteError
from dicomrelay.folders import sync_folder

__all__ = [
    "AddItem",
    "Edit",
    "Empty",
    "NewElement",
    "RemapUids",
    "Remove",
    "RemovePrivate",
    "Replace",
    "Rewritten",
    "Set",
    "copy_range",
    "rewrite",
    "rewrite_file",
]

DigestName: TypeAlias = Literal["sha256", "blake3"]
# An element of an item AddItem appends: (tag, VR, value); a value of VR SQ is
# a tuple of items, each a tuple of such elements.
NewElement: TypeAlias = tuple[int, str, "bytes | str | tuple[tuple[NewElement, ...], ...]"]


def _check_tag(tag: object) -> int:
    if isinstance(tag, bool) or not isinstance(tag, int):
        raise TypeError(f"a tag is an int such as 0x00100020, not {type(tag).__name__}")
    if not 0 <= tag <= 0xFFFFFFFF:
        raise RewriteError(f"not a tag: {tag:#x}", tag)
    return tag


def _check_vr(tag: int, vr: object) -> str:
    if not isinstance(vr, str) or len(vr) != 2 or not (vr.isascii() and vr.isupper()):
        raise RewriteError(
            f"({tag >> 16:04X},{tag & 0xFFFF:04X}): a VR is two capital letters, not {vr!r}", tag
        )
    return vr


def _check_value(value: object) -> None:
    if not isinstance(value, bytes | str):
        raise TypeError(f"a value is bytes or str, not {type(value).__name__}")


def _set_op(edit: object, op: tuple[object, ...]) -> None:
    # Each edit is converted once, when made: a rewrite hands the tuples over as they are.
    object.__setattr__(edit, "_op", op)


@dataclass(frozen=True, kw_only=True, slots=True)
class Set:
    """Set a top-level element's value, inserting it in tag order if absent."""

    tag: int
    value: bytes | str
    vr: str
    _op: tuple[object, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tag = _check_tag(self.tag)
        _check_value(self.value)
        _set_op(self, ("set", tag, _check_vr(tag, self.vr), self.value))


@dataclass(frozen=True, kw_only=True, slots=True)
class Replace:
    """Like :class:`Set`, but only where the element exists (never inserted);
    with ``everywhere``, in every item of every sequence too."""

    tag: int
    value: bytes | str
    vr: str
    everywhere: bool = True
    _op: tuple[object, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tag = _check_tag(self.tag)
        _check_value(self.value)
        vr = _check_vr(tag, self.vr)
        _set_op(self, ("replace", tag, vr, self.value, bool(self.everywhere)))


@dataclass(frozen=True, kw_only=True, slots=True)
class Empty:
    """Keep the element with a zero-length value (a sequence: with no items)."""

    tag: int
    everywhere: bool = True
    _op: tuple[object, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _set_op(self, ("empty", _check_tag(self.tag), bool(self.everywhere)))


@dataclass(frozen=True, kw_only=True, slots=True)
class Remove:
    """Remove every element whose ``tag & mask`` equals this ``tag & mask``
    (``mask=0xFF00FFFF`` reaches the repeating groups 50xx and 60xx); a
    sequence goes whole."""

    tag: int
    mask: int = 0xFFFFFFFF
    everywhere: bool = True
    _op: tuple[object, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tag, mask = _check_tag(self.tag), _check_tag(self.mask)
        _set_op(self, ("remove", tag, mask, bool(self.everywhere)))


@dataclass(frozen=True, kw_only=True, slots=True)
class RemovePrivate:
    """Remove every element of an odd group (private creators included)
    except the tags in ``keep``."""

    keep: frozenset[int] = frozenset()
    everywhere: bool = True
    _op: tuple[object, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keep = sorted(_check_tag(t) for t in self.keep)
        _set_op(self, ("remove_private", keep, bool(self.everywhere)))


@dataclass(frozen=True, kw_only=True, slots=True)
class RemapUids:
    """Replace UIDs with ``2.25.`` and the decimal integer of the first 16
    bytes of HMAC-SHA256(key, old UID): the same key maps a UID the same way
    in every instance, so references between instances stay consistent.

    ``tags=None`` remaps every UI element except those naming a class, scheme
    or standard rather than an instance: SOP classes (0008,0016), (0008,001A),
    (0008,001B), (0008,0062), (0008,1150), (0008,115A), (0004,1510); transfer
    syntaxes (0004,1512), (0400,0010), (0400,0510); coding schemes and context
    groups (0008,010C), (0008,010D), (0008,0117), (0008,0118); the device
    class (0018,100B). In implicit VR, the data dictionary says which elements
    are UI (a listed tag is taken as one). The file meta group's (0002,0003)
    follows the new (0008,0018).
    """

    tags: frozenset[int] | None
    key: bytes
    everywhere: bool = True
    _op: tuple[object, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tags = None if self.tags is None else sorted(_check_tag(t) for t in self.tags)
        if not isinstance(self.key, bytes) or not self.key:
            raise TypeError("the key is non-empty bytes")
        _set_op(self, ("remap_uids", tags, self.key, bool(self.everywhere)))


@dataclass(frozen=True, kw_only=True, slots=True)
class AddItem:
    """Append an item to a top-level sequence, creating the sequence if absent."""

    sequence_tag: int
    elements: tuple[NewElement, ...]
    _op: tuple[object, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tag = _check_tag(self.sequence_tag)
        _check_elements(self.elements)
        _set_op(self, ("add_item", tag, self.elements))


def _check_elements(elements: object) -> None:
    if not isinstance(elements, tuple):
        raise TypeError("an item's elements are a tuple of (tag, vr, value)")
    for element in elements:
        if not (isinstance(element, tuple) and len(element) == 3):
            raise TypeError(f"an element is (tag, vr, value), not {element!r}")
        tag, vr, value = element
        _check_vr(_check_tag(tag), vr)
        if isinstance(value, tuple):
            for item in value:
                _check_elements(item)
        else:
            _check_value(value)


Edit: TypeAlias = Set | Replace | Empty | Remove | RemovePrivate | RemapUids | AddItem


@dataclass(frozen=True, kw_only=True, slots=True)
class Rewritten:
    """The output: ``header``, then the source's bytes
    ``pixel_offset:pixel_offset + pixel_length`` (its pixel data value,
    unchanged), then ``trailer`` (elements after the pixel data: usually
    none). A deflated or pixel-less output is all header."""

    header: bytes
    pixel_offset: int
    pixel_length: int
    trailer: bytes
    # Hex digest of the whole output; None when rewritten with digest=None.
    digest: str | None

    @property
    def size(self) -> int:
        return len(self.header) + self.pixel_length + len(self.trailer)


def _ops(edits: Iterable[Edit]) -> list[tuple[object, ...]]:
    return [e._op for e in edits]


def rewrite(
    data: bytes | bytearray | memoryview | mmap.mmap | _native.Payload,
    edits: Iterable[Edit],
    *,
    digest: DigestName | None = "sha256",
) -> Rewritten:
    """Apply ``edits`` to the instance ``data``. The pixel data is not copied:
    the caller writes ``header``, ``data[pixel_offset:][:pixel_length]`` and
    ``trailer``. ``digest=None`` skips hashing the output."""
    header, offset, length, trailer, hexdigest = _native.rewrite(data, _ops(edits), digest=digest)
    return Rewritten(
        header=header, pixel_offset=offset, pixel_length=length, trailer=trailer, digest=hexdigest
    )


def rewrite_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    edits: Iterable[Edit],
    *,
    digest: DigestName | None = "sha256",
) -> Rewritten:
    """Write the rewrite of ``src`` to ``dst``: the new header, then the
    source's pixel data copied file to file by the kernel (never through
    Python), fsync'd, and renamed into place (with its folder synced), so
    ``dst`` never holds a partial file. ``dst`` is replaced if it exists."""
    src, dst = Path(src), Path(dst)
    header, offset, length, trailer, hexdigest = _native.rewrite_file(
        src, _ops(edits), digest=digest
    )
    result = Rewritten(
        header=header, pixel_offset=offset, pixel_length=length, trailer=trailer, digest=hexdigest
    )
    partial = dst.with_name(f".{dst.name}.{os.getpid()}.partial")
    out = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        _write_all(out, header)
        if length:
            source = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
            try:
                copy_range(source, out, offset, length, src)
            finally:
                os.close(source)
        _write_all(out, trailer)
        os.fsync(out)
    except BaseException:
        os.close(out)
        partial.unlink(missing_ok=True)
        raise
    os.close(out)
    os.replace(partial, dst)
    sync_folder(dst.parent)
    return result


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# Errors that mean "this kernel or filesystem pair cannot copy_file_range": try sendfile.
_NO_COPY_FILE_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM}


def copy_range(source: int, out: int, offset: int, length: int, name: Path) -> None:
    """Copy ``length`` bytes of ``source`` from ``offset`` to ``out``'s position,
    in the kernel: copy_file_range (reflinks where the filesystem can), else sendfile."""
    end = offset + length
    use_copy_file_range = hasattr(os, "copy_file_range")
    while offset < end:
        n = 0
        if use_copy_file_range:
            try:
                n = os.copy_file_range(source, out, end - offset, offset_src=offset)
            except OSError as e:
                if e.errno not in _NO_COPY_FILE_RANGE:
                    raise
                use_copy_file_range = False
                continue
        else:
            n = os.sendfile(out, source, offset, end - offset)
        if n == 0:
            raise OSError(errno.EIO, "the source file ended before its pixel data did", str(name))
        offset += n
