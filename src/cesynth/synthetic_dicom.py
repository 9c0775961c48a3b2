"""A synthetic CE-T1 as a DICOM MR series: marked synthetic, carrying no patient identity.

``cesynth predict --out-dicom DIR`` writes the native-grid prediction as one MR Image Storage
file per slice, so it can be viewed beside the acquired series. The series says what it is in
every place a viewer or archive shows: ``ImageType`` ``DERIVED\\SECONDARY\\SYNTHETIC``, the
series description, ``DerivationDescription`` and ``ImageComments``. By default it carries no
patient identity, no dates and fresh UIDs (study, series, frame of reference). Asked to
(``study``, from :func:`study_identity` of the T1 series), it is filed with the T1's study
instead: the patient and study attributes a PACS files a series by (:data:`STUDY_KEYWORDS`) are
copied from the T1 into the DICOM files, and nowhere else.

Geometry follows the NIfTI affine (RAS) converted to DICOM's patient frame (LPS): columns run
along voxel axis i, rows along j, one file per slice k. Intensities in [0, 1] are stored as
integers 0..:data:`STORED_MAX` with ``RescaleSlope`` 1 / :data:`STORED_MAX`, so a reader that
applies the rescale gets the model's values back to 2.5e-4.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
import pydicom.errors
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from cesynth import __version__
from cesynth.io import InputError

IMAGE_TYPE = ("DERIVED", "SECONDARY", "SYNTHETIC")
SERIES_DESCRIPTION = "SYNTHETIC CE-T1 (cesynth): no contrast given, not for diagnosis"
DERIVATION = ("Synthetic contrast-enhanced T1 computed by cesynth {version} from pre-contrast "
              "scans ({inputs}); no gadolinium was given. Not for diagnosis without review.")
STORED_MAX = 4000
SERIES_NUMBER = 9001
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
STUDY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                  "StudyInstanceUID", "StudyID", "StudyDate", "StudyTime", "AccessionNumber",
                  "ReferringPhysicianName", "FrameOfReferenceUID")
"""What a PACS needs to file the synthetic series with the acquired study (and a viewer to link
it to the T1's geometry); copied only when asked."""


def study_identity(series_dir: str | os.PathLike) -> dict[str, str]:
    """The :data:`STUDY_KEYWORDS` of a DICOM series (its first readable file).

    Raises:
        InputError: the folder holds no readable DICOM file.
    """
    folder = Path(series_dir)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError):
            continue
        return {k: str(ds.get(k, "")) for k in STUDY_KEYWORDS}
    raise InputError(folder, "no readable DICOM file to take the study from")


def check_output_folder(out_dir: str | os.PathLike) -> Path:
    """Refuse an output folder that exists with files in it (checked before any work).

    Raises:
        InputError: ``out_dir`` is a file, or a folder that is not empty.
    """
    path = Path(out_dir)
    if path.is_file():
        raise InputError(path, "DICOM output must be a folder, not a file")
    if path.is_dir() and any(path.iterdir()):
        raise InputError(path, "DICOM output folder is not empty")
    return path


def write_synthetic_series(data: np.ndarray, affine: np.ndarray, out_dir: str | os.PathLike,
                           *, inputs: Sequence[str],
                           study: Mapping[str, str] | None = None) -> list[Path]:
    """Write a 3D image in [0, 1] as a synthetic MR series, one file per slice (all or none).

    The files are written into a hidden folder beside ``out_dir`` and moved into place only
    when every slice is written.

    Args:
        data: the 3D synthetic image (values clipped to [0, 1]).
        affine: its 4x4 NIfTI voxel-to-RAS affine.
        out_dir: the series folder (absent or empty; :func:`check_output_folder`).
        inputs: the acquired modalities it was made from (for the derivation text).
        study: file the series with this study (:func:`study_identity`); None: no identity,
            fresh study and frame-of-reference UIDs.

    Returns:
        The written files, in slice order.
    """
    final = check_output_folder(out_dir)
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    try:
        names = _write_slices(np.asarray(data, dtype=np.float64), np.asarray(affine), tmp,
                              ", ".join(inputs) or "none", study or {})
        if final.is_dir():
            final.rmdir()
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [final / name for name in names]


def _write_slices(data: np.ndarray, affine: np.ndarray, folder: Path, inputs: str,
                  study: Mapping[str, str]) -> list[str]:
    if data.ndim != 3:
        raise InputError(folder, f"a DICOM series needs a 3D image, got shape {data.shape}")
    columns_dir, rows_dir, spacing = _directions(affine)
    stored = np.rint(np.clip(np.nan_to_num(data), 0.0, 1.0) * STORED_MAX).astype(np.uint16)
    series = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    derivation = DERIVATION.format(version=__version__, inputs=inputs)
    names = []
    for k in range(stored.shape[2]):
        ds = _slice_dataset(series, derivation)
        for keyword, value in study.items():
            setattr(ds, keyword, value)
        position = _RAS_TO_LPS @ (affine @ np.array([0.0, 0.0, k, 1.0]))[:3]
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [round(float(v), 6) for v in position]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*columns_dir, *rows_dir)]
        ds.PixelSpacing = [round(float(spacing[1]), 6), round(float(spacing[0]), 6)]
        ds.SliceThickness = round(float(spacing[2]), 6)
        pixels = np.ascontiguousarray(stored[:, :, k].T)
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
        name = f"IM{k + 1:05d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
        names.append(name)
    return names


def _directions(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit LPS directions of voxel axes i and j, and the spacing along i, j, k."""
    axes = _RAS_TO_LPS @ affine[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    return axes[:, 0] / spacing[0], axes[:, 1] / spacing[1], spacing


def _slice_dataset(uids: dict[str, str], derivation: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    # Patient and study identity left empty (type 2): nothing identifying is written.
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        setattr(ds, keyword, "")
    ds.Modality = "MR"
    ds.Manufacturer = "cesynth"
    ds.SoftwareVersions = __version__
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.ImageType = list(IMAGE_TYPE)
    ds.DerivationDescription = derivation
    ds.ImageComments = derivation
    ds.BurnedInAnnotation = "NO"
    ds.ScanningSequence = "RM"  # research mode: computed, not acquired
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = f"{1 / STORED_MAX:g}"
    ds.RescaleType = "US"
    ds.WindowCenter = "0.5"
    ds.WindowWidth = "1"
    return ds


__all__ = ["IMAGE_TYPE", "SERIES_DESCRIPTION", "STORED_MAX", "STUDY_KEYWORDS",
           "check_output_folder", "study_identity", "write_synthetic_series"]
