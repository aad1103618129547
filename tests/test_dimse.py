"""DIMSE command sets: round trips, agreement with pydicom's encoding, and
malformed command sets refused with DimseError."""

from __future__ import annotations

import contextlib
import struct
from io import BytesIO

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicomrelay.dicom.dimse import (
    CEchoRq,
    CEchoRsp,
    CStoreRq,
    CStoreRsp,
    DimseError,
    Status,
    parse_command,
)

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize(
    "command",
    [
        CEchoRq(message_id=1),
        CEchoRsp(responding_to=1, status=Status.SUCCESS),
        CStoreRq(message_id=7, sop_class_uid=CT, sop_instance_uid="1.2.3.4", priority=1),
        CStoreRq(
            message_id=8,
            sop_class_uid=CT,
            sop_instance_uid="1.2.3.45",
            move_originator_ae_title="MOVER",
            move_originator_message_id=3,
        ),
        CStoreRsp(responding_to=7, sop_class_uid=CT, sop_instance_uid="1.2.3.4"),
        CStoreRsp(
            responding_to=7,
            sop_class_uid=CT,
            sop_instance_uid="1.2.3.4",
            status=Status.CANNOT_UNDERSTAND,
            error_comment="truncated dataset",
        ),
    ],
)
def test_commands_round_trip(command: object) -> None:
    assert parse_command(command.encode()) == command  # type: ignore[attr-defined]


def test_encoding_matches_pydicom() -> None:
    """pydicom reads our command set, with the group length it computes."""
    raw = CStoreRq(message_id=7, sop_class_uid=CT, sop_instance_uid="1.2.3.4").encode()
    ds = dcmread(BytesIO(raw), force=True)
    assert ds.CommandField == 0x0001
    assert ds.AffectedSOPInstanceUID == "1.2.3.4"
    assert ds.CommandGroupLength == len(raw) - 12


def test_commands_from_pydicom_parse() -> None:
    ds = Dataset()
    ds.AffectedSOPClassUID = "1.2.840.10008.1.1"
    ds.CommandField = 0x0030
    ds.MessageID = 5
    ds.CommandDataSetType = 0x0101
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, ds)
    assert parse_command(buf.getvalue()) == CEchoRq(message_id=5)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\x00\x00\x01",
        struct.pack("<HHI", 0x0008, 0x0016, 2) + b"1\0",  # not group 0000
        struct.pack("<HHI", 0, 0x0100, 40) + b"\x01\x00",  # runs past the end
        struct.pack("<HHI", 0, 0x0100, 4) + b"\x01\x00\x00\x00",  # US of 4 bytes
        CEchoRq(message_id=1).encode()[:-3],
        struct.pack("<HHI", 0, 0x0100, 2) + struct.pack("<H", 0x0020),  # C-FIND-RQ
    ],
)
def test_malformed_command_sets_are_refused(raw: bytes) -> None:
    with pytest.raises(DimseError):
        parse_command(raw)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_dimse_errors(raw: bytes) -> None:
    with contextlib.suppress(DimseError):
        parse_command(raw)
