"""Properties of the rewrite over generated edit lists: pydicom making the
same edits agrees, a second pass changes nothing, and damaged input gives a
typed error, never anything else."""

from __future__ import annotations

import warnings

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicom_builders import IMPLICIT_LE, read_with_pydicom
from dicomrelay.errors import DicomParseError, RewriteError
from dicomrelay.rewrite import (
    AddItem,
    Edit,
    Empty,
    RemapUids,
    Remove,
    RemovePrivate,
    Replace,
    Rewritten,
    Set,
    rewrite,
)
from rewrite_reference import apply_with_pydicom, bundled, differences, group_length_errors

FILES = {
    name: bundled(name).read_bytes()
    for name in (
        "CT_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "nested_priv_SQ.dcm",
    )
}
# Tags that occur at the top level, in items, or nowhere in these files, each
# with the dictionary's VR, so implicit VR reads them back the same.
TAGS = {
    0x00080050: "SH",
    0x00080090: "PN",
    0x00081030: "LO",
    0x00081155: "UI",
    0x00100010: "PN",
    0x00100020: "LO",
    0x00104000: "LT",
    0x00181020: "LO",
    0x00200010: "SH",
    0x00321032: "PN",
}
text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\"), max_size=40
)
uid = st.from_regex(r"[12](\.[1-9][0-9]{0,5}){1,6}", fullmatch=True)


@st.composite
def edits(draw: st.DrawFn) -> Edit:
    tag = draw(st.sampled_from(sorted(TAGS)))
    vr = TAGS[tag]
    value = draw(uid if vr == "UI" else text.map(str.strip))
    kind = draw(st.sampled_from(["set", "replace", "empty", "remove", "private", "uids", "add"]))
    everywhere = draw(st.booleans())
    if kind == "private":
        return RemovePrivate(everywhere=everywhere)
    if kind == "uids":
        tags = draw(
            st.none() | st.frozensets(st.sampled_from([0x00080018, 0x0020000D, 0x00081155]))
        )
        return RemapUids(
            tags=tags, key=draw(st.binary(min_size=1, max_size=8)), everywhere=everywhere
        )
    if kind == "add":
        elements = ((0x04000563, "LO", value), (0x04000565, "CS", "COERCE")) if vr != "UI" else ()
        return AddItem(sequence_tag=0x04000561, elements=elements)
    if kind == "set":
        return Set(tag=tag, value=value, vr=vr)
    if kind == "replace":
        return Replace(tag=tag, value=value, vr=vr, everywhere=everywhere)
    if kind == "empty":
        return Empty(tag=tag, everywhere=everywhere)
    return Remove(tag=tag, everywhere=everywhere)


def whole(data: bytes, result: Rewritten) -> bytes:
    return result.header + data[result.pixel_offset :][: result.pixel_length] + result.trailer


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(FILES)), edit_list=st.lists(edits(), max_size=6))
def test_agrees_with_pydicom_and_a_second_pass_changes_nothing(
    name: str, edit_list: list[Edit]
) -> None:
    data = FILES[name]
    out = whole(data, rewrite(data, edit_list))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = read_with_pydicom(data)
        for edit in edit_list:
            apply_with_pydicom(expected, edit)
        got = read_with_pydicom(out)
        implicit = expected.file_meta.get("TransferSyntaxUID") == IMPLICIT_LE
        assert differences(got, expected, compare_vr=not implicit) == []
    assert group_length_errors(out) == []
    if not any(isinstance(e, RemapUids | AddItem) for e in edit_list):  # the rest are idempotent
        assert whole(out, rewrite(out, edit_list)) == out


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(FILES)),
    cuts=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=8),
    edit_list=st.lists(edits(), max_size=3),
)
def test_damaged_input_gives_a_typed_error_or_a_readable_output(
    name: str, cuts: list[tuple[int, int]], edit_list: list[Edit]
) -> None:
    data = bytearray(FILES[name])
    for at, byte in cuts:
        data[at % len(data)] = byte
    try:
        result = rewrite(bytes(data), edit_list)
    except (DicomParseError, RewriteError):
        return
    assert 0 <= result.pixel_offset <= result.pixel_offset + result.pixel_length <= len(data)
