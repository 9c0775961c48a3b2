"""Test helper: write a volume as a classic (one file per slice) MR Image Storage DICOM series."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

FAKE_IDENTIFIERS = {
    "PatientName": "Doe^Jane",
    "PatientID": "MRN123456",
    "PatientBirthDate": "19700101",
    "AccessionNumber": "ACC998877",
    "InstitutionName": "Saint Nowhere Hospital",
    "InstitutionAddress": "1 Fake Street Springfield",
    "ReferringPhysicianName": "House^Gregory",
    "StudyDate": "20230405",
    "SeriesDate": "20230405",
    "AcquisitionDate": "20230405",
    "ContentDate": "20230405",
    # free text and times that dcm2niix carries into NIfTI headers (aux_file, descrip) and
    # sidecars unless they are scrubbed
    "ImageComments": "CommentSecret77",
    "StudyDescription": "StudyDescSecret88",
    "AcquisitionTime": "101520",
    "ContentTime": "101521",
}

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def write_series_from_volume(
    data: np.ndarray,
    affine: np.ndarray,
    out_dir: str | Path,
    *,
    series_description: str,
    series_number: int,
    study_uid: str,
    b_values: Sequence[float] | None = None,
    b_vectors: np.ndarray | None = None,
    manufacturer: str = "GE MEDICAL SYSTEMS",
    tags: Mapping[str, Any] | None = None,
    private: Sequence[tuple[tuple[int, int], str, Any]] = (),
) -> list[Path]:
    """Write ``data`` (3D, or 4D DWI with ``b_values``/``b_vectors``) as one DICOM file per slice.

    Values are stored as uint16 (rounded; the caller should pass integers in 0..65535).
    Geometry follows the NIfTI affine: DICOM columns run along voxel axis i, rows along j,
    slices along k; DICOM's patient frame is LPS, NIfTI's world frame is RAS.

    Args:
        data: 3D volume, or 4D (x, y, z, volume) for diffusion.
        affine: 4x4 NIfTI voxel-to-RAS affine.
        out_dir: folder for the files (created).
        series_description: SeriesDescription, which the converter matches on.
        series_number: SeriesNumber.
        study_uid: StudyInstanceUID shared by the subject's series.
        b_values: per-volume b-values (4D only).
        b_vectors: (volumes, 3) unit gradient directions in the image frame (4D only).
        manufacturer: Manufacturer tag; selects which diffusion tags dcm2niix reads.
        tags: DICOM keywords to set on every file (RepetitionTime, ImageType, AcquisitionTime,
            ContrastBolusAgent, ...), after the defaults; a value of None deletes the tag.
        private: ``((group, element), VR, value)`` elements to add (vendor private tags; a
            private creator for the block is added).

    Returns:
        The written file paths.
    """
    volumes = data[..., np.newaxis] if data.ndim == 3 else data
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    columns_dir, rows_dir, slice_step, spacing = _dicom_geometry(affine)
    paths = []
    n_slices = volumes.shape[2]
    for vol in range(volumes.shape[3]):
        for k in range(n_slices):
            ds = _base_dataset(series_description, series_number, study_uid, series_uid,
                               manufacturer)
            instance = vol * n_slices + k + 1
            ds.InstanceNumber = instance
            ds.AcquisitionNumber = vol + 1
            position = _RAS_TO_LPS @ (affine @ np.array([0.0, 0.0, k, 1.0]))[:3]
            ds.ImagePositionPatient = [float(v) for v in position]
            ds.ImageOrientationPatient = [float(v) for v in (*columns_dir, *rows_dir)]
            ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
            ds.SliceThickness = float(slice_step)
            ds.SpacingBetweenSlices = float(slice_step)
            ds.SliceLocation = float(position[2])
            pixels = np.clip(np.rint(volumes[:, :, k, vol]), 0, 65535).astype(np.uint16).T
            ds.Rows, ds.Columns = pixels.shape
            ds.PixelData = np.ascontiguousarray(pixels).tobytes()
            if b_values is not None:
                _add_diffusion(ds, float(b_values[vol]), np.asarray(b_vectors)[vol])
            for keyword, value in (tags or {}).items():
                if value is None:
                    if keyword in ds:
                        delattr(ds, keyword)
                else:
                    setattr(ds, keyword, value)
            for (group, element), vr, value in private:
                ds.add_new((group, 0x0010), "LO", "cesynth test vendor")
                ds.add_new((group, element), vr, value)
            path = out_dir / f"IM{series_number:03d}_{instance:05d}"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def _dicom_geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    axes_lps = _RAS_TO_LPS @ affine[:3, :3]
    spacing = np.linalg.norm(axes_lps, axis=0)
    return axes_lps[:, 0] / spacing[0], axes_lps[:, 1] / spacing[1], float(spacing[2]), spacing


def _base_dataset(description: str, number: int, study_uid: str, series_uid: str,
                  manufacturer: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = "MR"
    ds.Manufacturer = manufacturer
    ds.SeriesDescription = description
    ds.ProtocolName = description
    ds.SeriesNumber = number
    ds.StudyTime = "101010"
    ds.SeriesTime = "101500"
    ds.AcquisitionTime = "101520"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.MagneticFieldStrength = 3.0
    ds.RepetitionTime = 8.0
    ds.EchoTime = 3.0
    ds.FlipAngle = 12.0
    ds.PatientPosition = "HFS"
    for keyword, value in FAKE_IDENTIFIERS.items():
        setattr(ds, keyword, value)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    return ds


def _add_diffusion(ds: FileDataset, b_value: float, direction: np.ndarray) -> None:
    ds.add_new((0x0018, 0x9087), "FD", b_value)
    ds.add_new((0x0018, 0x9089), "FD", [float(v) for v in direction])
