"""DIMSE command sets (PS3.7 section 9.3 and annex E) for C-ECHO and C-STORE.

A command set is a little dataset of group 0000 elements, always implicit VR
little endian, led by its group length. Encoding and decoding are pure; the
bytes travel as command PDVs of P-DATA-TF PDUs.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from dicomrelay.errors import ProtocolError


class DimseError(ProtocolError):
    """A command set that is malformed, or not one this node understands."""


class CommandField(enum.IntEnum):
    C_STORE_RQ = 0x0001
    C_STORE_RSP = 0x8001
    C_ECHO_RQ = 0x0030
    C_ECHO_RSP = 0x8030


class Status(enum.IntEnum):
    """Statuses a C-STORE or C-ECHO response carries (PS3.4 B.2.3, PS3.7 C)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700  # A7xx: refused, out of resources
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # A9xx
    CANNOT_UNDERSTAND = 0xC000  # Cxxx
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    DUPLICATE_INVOCATION = 0x0210
    UNRECOGNIZED_OPERATION = 0x0211
    MISTYPED_ARGUMENT = 0x0212


NO_DATASET = 0x0101  # (0000,0800) Command Data Set Type: no dataset follows
HAS_DATASET = 0x0000

GROUP_LENGTH = 0x00000000
AFFECTED_SOP_CLASS_UID = 0x00000002
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
PRIORITY = 0x00000700
COMMAND_DATA_SET_TYPE = 0x00000800
STATUS = 0x00000900
ERROR_COMMENT = 0x00000902
AFFECTED_SOP_INSTANCE_UID = 0x00001000
MOVE_ORIGINATOR_AE_TITLE = 0x00001030
MOVE_ORIGINATOR_MESSAGE_ID = 0x00001031

# How each command element's value is coded: UI, AE and LO as padded text,
# US as a 16-bit and UL as a 32-bit little-endian integer.
_TEXT = {AFFECTED_SOP_CLASS_UID, AFFECTED_SOP_INSTANCE_UID, ERROR_COMMENT, MOVE_ORIGINATOR_AE_TITLE}
_UID = {AFFECTED_SOP_CLASS_UID, AFFECTED_SOP_INSTANCE_UID}
_U16 = {
    COMMAND_FIELD,
    MESSAGE_ID,
    MESSAGE_ID_BEING_RESPONDED_TO,
    PRIORITY,
    COMMAND_DATA_SET_TYPE,
    STATUS,
    MOVE_ORIGINATOR_MESSAGE_ID,
}

Value = int | str


def encode_command(elements: dict[int, Value]) -> bytes:
    """Implicit VR little endian, tags ascending, group length first."""
    body = bytearray()
    for tag in sorted(elements):
        value = elements[tag]
        if tag in _U16:
            raw = struct.pack("<H", int(value))
        elif tag in _TEXT:
            raw = str(value).encode("ascii")
            if len(raw) % 2:
                raw += b"\0" if tag in _UID else b" "
        else:
            raise DimseError(f"no coding known for command element {tag:08X}")
        body += struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(raw)) + raw
    return struct.pack("<HHII", 0, 0, 4, len(body)) + bytes(body)


def decode_command(data: bytes) -> dict[int, Value]:
    """Every element of a command set; raises DimseError on malformed bytes."""
    out: dict[int, Value] = {}
    pos = 0
    while pos < len(data):
        if pos + 8 > len(data):
            raise DimseError(f"command set truncated in an element header at byte {pos}")
        group, element, length = struct.unpack_from("<HHI", data, pos)
        tag = group << 16 | element
        pos += 8
        if group != 0:
            raise DimseError(f"element ({group:04X},{element:04X}) in a command set")
        if length > len(data) - pos:
            raise DimseError(f"element {tag:08X} runs past the command set's end")
        raw = data[pos : pos + length]
        pos += length
        if tag == GROUP_LENGTH:
            continue
        if tag in _U16:
            if length != 2:
                raise DimseError(f"element {tag:08X} must be 2 bytes, not {length}")
            out[tag] = struct.unpack("<H", raw)[0]
        elif tag in _TEXT:
            try:
                out[tag] = raw.decode("ascii").rstrip("\0 ")
            except UnicodeDecodeError:
                raise DimseError(f"element {tag:08X} is not ASCII") from None
        # Other command elements (of services this node does not use) are skipped.
    if COMMAND_FIELD not in out:
        raise DimseError("command set has no Command Field (0000,0100)")
    return out


def _int(elements: dict[int, Value], tag: int) -> int:
    value = elements.get(tag)
    if not isinstance(value, int):
        raise DimseError(f"command lacks {tag:08X}")
    return value


def _str(elements: dict[int, Value], tag: int) -> str:
    value = elements.get(tag)
    if not isinstance(value, str) or not value:
        raise DimseError(f"command lacks {tag:08X}")
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class CEchoRq:
    message_id: int
    sop_class_uid: str = "1.2.840.10008.1.1"  # Verification

    def encode(self) -> bytes:
        return encode_command(
            {
                AFFECTED_SOP_CLASS_UID: self.sop_class_uid,
                COMMAND_FIELD: CommandField.C_ECHO_RQ,
                MESSAGE_ID: self.message_id,
                COMMAND_DATA_SET_TYPE: NO_DATASET,
            }
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class CEchoRsp:
    responding_to: int
    status: int = Status.SUCCESS
    sop_class_uid: str = "1.2.840.10008.1.1"

    def encode(self) -> bytes:
        return encode_command(
            {
                AFFECTED_SOP_CLASS_UID: self.sop_class_uid,
                COMMAND_FIELD: CommandField.C_ECHO_RSP,
                MESSAGE_ID_BEING_RESPONDED_TO: self.responding_to,
                COMMAND_DATA_SET_TYPE: NO_DATASET,
                STATUS: self.status,
            }
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class CStoreRq:
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    priority: int = 0  # medium
    move_originator_ae_title: str | None = None
    move_originator_message_id: int | None = None

    def encode(self) -> bytes:
        elements: dict[int, Value] = {
            AFFECTED_SOP_CLASS_UID: self.sop_class_uid,
            COMMAND_FIELD: CommandField.C_STORE_RQ,
            MESSAGE_ID: self.message_id,
            PRIORITY: self.priority,
            COMMAND_DATA_SET_TYPE: HAS_DATASET,
            AFFECTED_SOP_INSTANCE_UID: self.sop_instance_uid,
        }
        if self.move_originator_ae_title is not None:
            elements[MOVE_ORIGINATOR_AE_TITLE] = self.move_originator_ae_title
        if self.move_originator_message_id is not None:
            elements[MOVE_ORIGINATOR_MESSAGE_ID] = self.move_originator_message_id
        return encode_command(elements)


@dataclass(frozen=True, kw_only=True, slots=True)
class CStoreRsp:
    responding_to: int
    sop_class_uid: str
    sop_instance_uid: str
    status: int = Status.SUCCESS
    error_comment: str | None = None

    def encode(self) -> bytes:
        elements: dict[int, Value] = {
            AFFECTED_SOP_CLASS_UID: self.sop_class_uid,
            COMMAND_FIELD: CommandField.C_STORE_RSP,
            MESSAGE_ID_BEING_RESPONDED_TO: self.responding_to,
            COMMAND_DATA_SET_TYPE: NO_DATASET,
            STATUS: self.status,
            AFFECTED_SOP_INSTANCE_UID: self.sop_instance_uid,
        }
        if self.error_comment:
            elements[ERROR_COMMENT] = self.error_comment[:64]
        return encode_command(elements)


Command = CEchoRq | CEchoRsp | CStoreRq | CStoreRsp


def parse_command(data: bytes) -> Command:
    """The C-ECHO or C-STORE message a command set encodes."""
    e = decode_command(data)
    field = _int(e, COMMAND_FIELD)
    if field == CommandField.C_ECHO_RQ:
        return CEchoRq(
            message_id=_int(e, MESSAGE_ID), sop_class_uid=_str(e, AFFECTED_SOP_CLASS_UID)
        )
    if field == CommandField.C_ECHO_RSP:
        return CEchoRsp(
            responding_to=_int(e, MESSAGE_ID_BEING_RESPONDED_TO),
            status=_int(e, STATUS),
            sop_class_uid=_str(e, AFFECTED_SOP_CLASS_UID),
        )
    if field == CommandField.C_STORE_RQ:
        if _int(e, COMMAND_DATA_SET_TYPE) == NO_DATASET:
            raise DimseError("C-STORE-RQ without a dataset")
        originator = e.get(MOVE_ORIGINATOR_AE_TITLE)
        originator_id = e.get(MOVE_ORIGINATOR_MESSAGE_ID)
        return CStoreRq(
            message_id=_int(e, MESSAGE_ID),
            sop_class_uid=_str(e, AFFECTED_SOP_CLASS_UID),
            sop_instance_uid=_str(e, AFFECTED_SOP_INSTANCE_UID),
            priority=int(e.get(PRIORITY, 0)),
            move_originator_ae_title=originator if isinstance(originator, str) else None,
            move_originator_message_id=originator_id if isinstance(originator_id, int) else None,
        )
    if field == CommandField.C_STORE_RSP:
        comment = e.get(ERROR_COMMENT)
        return CStoreRsp(
            responding_to=_int(e, MESSAGE_ID_BEING_RESPONDED_TO),
            sop_class_uid=_str(e, AFFECTED_SOP_CLASS_UID),
            sop_instance_uid=_str(e, AFFECTED_SOP_INSTANCE_UID),
            status=_int(e, STATUS),
            error_comment=comment if isinstance(comment, str) else None,
        )
    raise DimseError(f"command field {field:#06x} is not C-ECHO or C-STORE")
