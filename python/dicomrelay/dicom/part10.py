"""Part 10 file meta information (PS3.10 section 7.1) for received datasets."""

from __future__ import annotations

from dicomrelay import _native

IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1471.1"  # dicomrelay
IMPLEMENTATION_VERSION = "DICOMRELAY_01"


def file_meta(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    source_ae_title: str | None = None,
) -> bytes:
    """Preamble, ``DICM`` and the group 0002 elements, explicit VR little endian
    (the encoder the storage SCP's data plane writes with)."""
    return _native.file_meta(
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        source_ae_title=source_ae_title,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION,
    )
