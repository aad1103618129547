"""The values de-identification writes, and the table's data file and the
script that converted it."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomrelay.confidentiality_profile import ACTIONS, Option, profile_table
from dicomrelay.deid_values import (
    clean_text,
    date_offset_days,
    dummy_value,
    identifying_words,
    pseudonym,
    shift_date_value,
    words_pattern,
)

ROOT = Path(__file__).resolve().parent.parent


@given(st.dates(min_value=dt.date(1000, 1, 1)), st.integers(-3652, -1))
def test_a_shifted_date_moves_by_exactly_the_offset(day: dt.date, days: int) -> None:
    text = day.strftime("%Y%m%d")
    shifted = shift_date_value("DA", text, days)
    assert shifted is not None
    assert dt.datetime.strptime(shifted, "%Y%m%d").date() - day == dt.timedelta(days=days)


@pytest.mark.parametrize(
    ("vr", "value", "expected"),
    [
        ("DA", "20200301", "20200229"),  # a leap day
        ("DA", "20200131\\20200201", "20200130\\20200131"),
        ("DA", "20200131 ", "20200130"),
        ("DT", "20200101000000.000000+0100", "20191231000000.000000+0100"),
        ("DT", "20200101", "20191231"),
        ("DA", "2020.01.31", None),  # the old form: not shifted, so emptied
        ("DA", "20201331", None),
        ("DT", "2020", None),
        ("DA", "", None),
    ],
)
def test_dates_that_shift_and_dates_that_do_not(vr: str, value: str, expected: str | None) -> None:
    assert shift_date_value(vr, value, -1) == expected


def test_the_date_offset_is_the_projects() -> None:
    offsets = {date_offset_days(bytes([i]) * 16) for i in range(200)}
    assert all(-3652 <= o <= -1 for o in offsets)
    assert len(offsets) > 150  # spread, not a constant
    assert date_offset_days(b"k" * 16) == date_offset_days(b"k" * 16)


def test_pseudonyms_are_keyed_and_labelled() -> None:
    a = pseudonym(b"k" * 16, "patient-id", "123")
    assert a == pseudonym(b"k" * 16, "patient-id", "123")
    assert a != pseudonym(b"j" * 16, "patient-id", "123")
    assert a != pseudonym(b"k" * 16, "ae-title", "123")
    assert len(a) == 16


def test_clean_text_takes_out_names_ids_numbers_and_dates() -> None:
    words = words_pattern(identifying_words(["Smith^John^^Dr", "MRN0042", "St Elsewhere"]))
    text = "Follow-up for JOHN smith (MRN0042) 03/04/2021, ref 1234567, St Elsewhere: stable"
    assert clean_text(text, words) == "Follow-up for ( ) , ref , : stable"
    assert clean_text("Smithson", words) == "Smithson"  # whole words only
    assert clean_text("CT HEAD", None) == "CT HEAD"


@pytest.mark.parametrize(
    "vr", ["AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC",
           "UR", "UT", "US or SS", "OB or OW", "FD", "UN"],
)  # fmt: skip
def test_every_dummy_is_valid_for_its_vr(vr: str) -> None:
    value = dummy_value(vr)
    assert len(value) > 0
    if isinstance(value, str):
        assert len(value) <= {"AE": 16, "AS": 4, "CS": 16, "DA": 8, "SH": 16, "TM": 16}.get(vr, 64)
    else:
        assert len(value) % 2 == 0


def test_the_table_names_its_edition_and_source() -> None:
    data = ROOT / "python/dicomrelay/data/confidentiality_profile.json"
    document = json.loads(data.read_text())
    assert document["edition"] == "2024b"
    assert document["source"]["repository"] == "https://github.com/innolitics/dicom-standard"
    table = profile_table()
    assert len(table.rows) == len(document["attributes"]) > 600
    assert {r.basic for r in table.rows} | {table.private_basic} == ACTIONS - {"K", "C"}
    columns = {c for r in table.rows for c in r.options}
    assert {o.column for o in Option} <= columns | {"retain_safe_private"}
    assert table.private_options == {"retain_safe_private": "C"}
    name = table.row(0x00100010)
    assert name is not None
    assert (name.name, name.vr, name.basic) == ("Patient's Name", "PN", "Z")
    overlay = table.row(0x60023000)
    assert overlay is not None
    assert overlay.name == "Overlay Data"


def _tool() -> ModuleType:
    script = ROOT / "tools/confidentiality_profile.py"
    spec = importlib.util.spec_from_file_location("cp_tool", script)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cp_tool"] = module
    spec.loader.exec_module(module)
    return module


def test_the_conversion_keeps_each_row_and_action() -> None:
    tool = _tool()
    profile = [
        {"name": "Patient's Name", "tag": "(0010,0010)", "stdCompIOD": "Y",
         "basicProfile": "Z", "id": "00100010"},
        {"name": "Overlay Data", "tag": "(60XX,3000)", "stdCompIOD": "Y", "basicProfile": "X",
         "cleanGraphOpt": "C", "id": "60xx3000"},
        {"name": "Private Attributes", "tag": "(GGGG,EEEE) WHERE GGGG IS ODD",
         "stdCompIOD": "N", "basicProfile": "X", "rtnSafePrivOpt": "C", "id": "private"},
    ]  # fmt: skip
    dictionary = [
        {"tag": "(0010,0010)", "valueRepresentation": "PN"},
        {"tag": "(60xx,3000)", "valueRepresentation": "OB or OW"},
    ]
    table = tool.convert(profile, dictionary)
    assert table["private"]["options"] == {"retain_safe_private": "C"}
    assert table["attributes"] == [
        {"tag": "00100010", "mask": "FFFFFFFF", "name": "Patient's Name", "vr": "PN",
         "in_standard_iod": True, "basic": "Z", "options": {}},
        {"tag": "60003000", "mask": "FF00FFFF", "name": "Overlay Data", "vr": "OB or OW",
         "in_standard_iod": True, "basic": "X", "options": {"clean_graphics": "C"}},
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown action"):
        tool.convert([{**profile[0], "basicProfile": "Q"}], dictionary)
    with pytest.raises(ValueError, match="columns this script does not know"):
        tool.convert([{**profile[0], "newOpt": "K"}], dictionary)
