"""Synthetic but realistic CT instances for the benchmarks, built with pydicom.

One dataset is built per session; a study of many slices is made by patching a
fixed-width UID counter in the encoded bytes, which keeps every element length
unchanged and makes 1,000 files cost one encode plus 1,000 plain writes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_ROOT_UID, UID, CTImageStorage, ExplicitVRLittleEndian

ROWS = COLUMNS = 512
STUDY_SIZE = 1_000

_ROOT = f"{PYDICOM_ROOT_UID}31415"
STUDY_UID = f"{_ROOT}.1"
SERIES_UID = f"{_ROOT}.2"
FRAME_OF_REFERENCE_UID = f"{_ROOT}.3"
# The instance UID ends in a fixed-width counter (a leading 1, since a UID
# component may not start with 0): the same length for every slice.
_INSTANCE_PREFIX = f"{_ROOT}.4.1"


@dataclass(frozen=True, kw_only=True)
class Payload:
    """Bytes to digest, and the size label its benchmark group is named after."""

    label: str
    data: bytes


def instance_uid(index: int) -> str:
    return f"{_INSTANCE_PREFIX}{index:06d}"


def _phantom(frames: int) -> bytes:
    """A water disc in air with noise, stored as CT numbers + 1024 (12 bits used)."""
    y, x = np.ogrid[:ROWS, :COLUMNS]
    disc = (x - COLUMNS / 2) ** 2 + (y - ROWS / 2) ** 2 < (0.45 * ROWS) ** 2
    noise = np.random.default_rng(0).normal(0.0, 12.0, (ROWS, COLUMNS))
    frame = np.clip(np.where(disc, 1024.0, 24.0) + noise, 0, 4095).astype("<u2")
    return frame.tobytes() * frames


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _referenced_image(index: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = f"{_ROOT}.9.{index}"
    return item


def ct_dataset(frames: int = 1) -> Dataset:
    """A CT image with the header a scanner console writes (about 90 elements)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceCreationDate = "20240314"
    ds.InstanceCreationTime = "101502.123456"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = instance_uid(0)
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240314"
    ds.StudyTime = "100812"
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "101458.250000"
    ds.AccessionNumber = "ACC20240314001"
    ds.Modality = "CT"
    ds.Manufacturer = "ACME Medical"
    ds.InstitutionName = "General Hospital"
    ds.InstitutionAddress = "1 Hospital Road, Springfield"
    ds.ReferringPhysicianName = "Doe^Jane^^Dr"
    ds.StationName = "CT01"
    ds.StudyDescription = "CT CHEST ABDOMEN PELVIS WITH CONTRAST"
    ds.ProcedureCodeSequence = [_code("CTCAP", "L", "CT Chest Abdomen Pelvis w contrast")]
    ds.SeriesDescription = "Body 1.0 CE"
    ds.InstitutionalDepartmentName = "Radiology"
    ds.OperatorsName = "Tech^Alex"
    ds.ManufacturerModelName = "Acme CT 128"
    ds.ReferencedImageSequence = [_referenced_image(1), _referenced_image(2)]
    ds.PatientName = "Smith^John^Q"
    ds.PatientID = "MRN00123456"
    ds.IssuerOfPatientID = "GENHOSP"
    ds.PatientBirthDate = "19580602"
    ds.PatientSex = "M"
    ds.PatientAge = "065Y"
    ds.PatientWeight = "82.5"
    ds.BodyPartExamined = "CHEST"
    ds.ScanOptions = "HELICAL MODE"
    ds.SliceThickness = "1.0"
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500.0"
    ds.SoftwareVersions = "VA40"
    ds.ProtocolName = "CAP_PORTAL_VENOUS"
    ds.ReconstructionDiameter = "380.0"
    ds.DistanceSourceToDetector = "1085.6"
    ds.DistanceSourceToPatient = "595.0"
    ds.GantryDetectorTilt = "0.0"
    ds.TableHeight = "152.0"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = "212"
    ds.Exposure = "106"
    ds.FilterType = "BODY"
    ds.GeneratorPower = "25"
    ds.FocalSpots = "1.2"
    ds.ConvolutionKernel = "B30f"
    ds.PatientPosition = "FFS"
    ds.RevolutionTime = 0.5
    ds.SingleCollimationWidth = 0.6
    ds.TotalCollimationWidth = 38.4
    ds.TableSpeed = 46.0
    ds.TableFeedPerRotation = 23.0
    ds.SpiralPitchFactor = 0.6
    ds.CTDIvol = 8.4
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    ds.StudyID = "4711"
    ds.SeriesNumber = 3
    ds.AcquisitionNumber = 2
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = ["-190.0", "-190.0", "-125.5"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = FRAME_OF_REFERENCE_UID
    ds.PositionReferenceIndicator = "SN"
    ds.SliceLocation = "-125.5"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows = ROWS
    ds.Columns = COLUMNS
    ds.PixelSpacing = ["0.742188", "0.742188"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = ["40", "-600"]
    ds.WindowWidth = ["400", "1500"]
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenterWidthExplanation = ["WINDOW1", "WINDOW2"]
    ds.PixelData = _phantom(frames)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(f"{_ROOT}.100")
    meta.ImplementationVersionName = "DICOMRELAY_BENCH"
    meta.SourceApplicationEntityTitle = "CT01"
    ds.file_meta = meta
    return ds


def encode(ds: Dataset) -> bytes:
    """The Part 10 file: preamble, meta group, explicit VR little endian dataset."""
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def write_study(template: bytes, folder: Path, count: int) -> list[Path]:
    """Write `count` slices of one series, each with its own SOP Instance UID."""
    placeholder = instance_uid(0).encode()
    # Meta group and dataset both carry the instance UID; nothing else may match.
    if template.count(placeholder) != 2:
        raise ValueError("template must hold the placeholder UID exactly twice")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(1, count + 1):
        path = folder / f"CT{index:06d}.dcm"
        path.write_bytes(template.replace(placeholder, instance_uid(index).encode()))
        paths.append(path)
    return paths
