"""Test helper: clinical MR studies as scanners export them, written with pydicom.

Small volumes (a few thousand voxels per series) with the tags a scanner writes: ImageType,
ScanningSequence, MRAcquisitionType, TR/TE/TI, acquisition times, ContrastBolusAgent where the
site sets it, b-values, vendor ADC scaling. :func:`philips_study` mirrors the real Philips export
of FIELD-NOTES ("Real scans"): pre and post T1 SE share their description, the 3D post-contrast T1
has no contrast word, FLAIR is ``T2W_FLAIR_TRA``, the scanner writes trace, ADC and registered DWI
beside the DWI (b = 0 and 1000 only), and the ADC map needs display scaling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

from helpers.dicom_writer import write_series_from_volume

AXIAL = np.array([[2.0, 0, 0, -12], [0, 2.0, 0, -14], [0, 0, 2.5, -12], [0, 0, 0, 1]])
ISO_3D = np.array([[1.5, 0, 0, -12], [0, 1.5, 0, -14], [0, 0, 1.5, -12], [0, 0, 0, 1]])
SHAPE = (12, 14, 10)
PHILIPS = "Philips Medical Systems"
PHILIPS_ADC_DISPLAY_MEDIAN = 1169.0
"""The scanner's ADC map in 1e-6 mm2/s (display scaling): 1.17e-3 mm2/s."""
PHILIPS_PRECISE_SCALE = 0.0024
"""Philips private ScaleSlope (2005,100E): dcm2niix's default "precise float" divides by it."""

SE_T1 = {"ScanningSequence": "SE", "SequenceVariant": ["SK", "SP"], "MRAcquisitionType": "2D",
         "RepetitionTime": 550.0, "EchoTime": 15.0}
TSE_T2 = {"ScanningSequence": "SE", "SequenceVariant": ["SK"], "MRAcquisitionType": "2D",
          "RepetitionTime": 4000.0, "EchoTime": 100.0}
FLAIR = {"ScanningSequence": ["SE", "IR"], "SequenceVariant": ["SK", "MP"],
         "MRAcquisitionType": "2D", "RepetitionTime": 11000.0, "EchoTime": 140.0,
         "InversionTime": 2800.0}
GRE_3D_T1 = {"ScanningSequence": "GR", "SequenceVariant": ["SP"], "MRAcquisitionType": "3D",
             "RepetitionTime": 8.0, "EchoTime": 4.0}
EPI_DWI = {"ScanningSequence": "EP", "SequenceVariant": ["SK"], "MRAcquisitionType": "2D",
           "RepetitionTime": 3000.0, "EchoTime": 80.0}
SWI = {"ScanningSequence": "GR", "SequenceVariant": ["SP"], "MRAcquisitionType": "3D",
       "RepetitionTime": 30.0, "EchoTime": 20.0}


@dataclass
class Series:
    """One series to write: its number, description, time (HHMMSS), tags and volume."""

    number: int
    description: str
    time: str
    tags: Mapping[str, Any]
    kind: str = "anat"  # anat | dwi | adc | bold | localizer
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "M", "ND")
    affine: np.ndarray = field(default_factory=lambda: AXIAL)
    shape: tuple[int, int, int] = SHAPE
    b_values: Sequence[float] = ()
    private: Sequence[tuple[tuple[int, int], str, Any]] = ()
    value: float | None = None  # a constant-ish map (ADC) instead of an ellipsoid
    seed: int = 0


def volume(seed: int, shape: tuple[int, ...] = SHAPE, scale: float = 800.0) -> np.ndarray:
    """An integer-valued ellipsoid with noise (DICOM stores it exactly)."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    inside = sum(axis**2 for axis in grid) < 0.7
    return np.rint(scale * inside + rng.uniform(20, 120, shape)).astype(np.float64)


def write_study(folder: str | Path, series: Sequence[Series], *, manufacturer: str = PHILIPS,
                study_uid: str | None = None) -> dict[int, Path]:
    """Write each series into ``folder/s<number>``; return number -> folder."""
    folder, study = Path(folder), study_uid or generate_uid()
    written = {}
    for item in series:
        data, diffusion = _data(item)
        tags = {"AcquisitionTime": item.time, "SeriesTime": item.time, "ContentTime": item.time,
                "ImageType": list(item.image_type), **item.tags}
        out = folder / f"s{item.number}"
        write_series_from_volume(data, item.affine, out, series_description=item.description,
                                 series_number=item.number, study_uid=study,
                                 manufacturer=manufacturer, tags=tags, private=item.private,
                                 **diffusion)
        written[item.number] = out
    return written


def _data(item: Series) -> tuple[np.ndarray, dict[str, Any]]:
    if item.kind == "dwi":
        b = np.asarray(item.b_values, dtype=float)
        s0 = volume(item.seed, item.shape) + 100
        data = np.rint(np.stack([s0 * np.exp(-bv * 9e-4) for bv in b], axis=-1))
        axes = np.eye(3)
        directions = np.array([[0, 0, 0] if bv < 1 else axes[i % 3] for i, bv in enumerate(b)])
        return data, {"b_values": b, "b_vectors": directions}
    if item.kind == "bold":
        return np.stack([volume(item.seed + t, item.shape) for t in range(5)], axis=-1), {}
    if item.value is not None:
        rng = np.random.default_rng(item.seed)
        inside = volume(item.seed, item.shape) > 500
        data = np.where(inside, rng.normal(item.value, item.value * 0.05, item.shape), 0)
        return np.rint(np.clip(data, 0, None)), {}
    return volume(item.seed, item.shape), {}


def philips_adc_private(scale: float = PHILIPS_PRECISE_SCALE) -> list:
    """The private ScaleSlope that makes dcm2niix's default Philips scaling wrong for a map."""
    return [((0x2005, 0x100E), "FL", scale)]


@dataclass(frozen=True)
class VendorAdc:
    """How a vendor stores its ADC map series: the values in 1e-6 mm2/s once RescaleSlope is
    applied (dcm2niix's display scaling); Philips adds a private ScaleSlope that its default
    "precise float" scaling would divide by (FIELD-NOTES, "Real scans")."""

    manufacturer: str
    rescale_slope: float = 1.0
    private: tuple[tuple[tuple[int, int], str, Any], ...] = ()
    image_type: tuple[str, ...] = ("DERIVED", "PRIMARY", "DIFFUSION", "ADC")

    def stored(self, adc_1e6: float | np.ndarray) -> float | np.ndarray:
        """The stored pixel values of a map in 1e-6 mm2/s."""
        return adc_1e6 / self.rescale_slope


VENDOR_ADC = {
    "siemens": VendorAdc("SIEMENS"),
    "ge": VendorAdc("GE MEDICAL SYSTEMS", rescale_slope=2.0),
    "philips": VendorAdc(PHILIPS, private=tuple(philips_adc_private()),
                         image_type=("ORIGINAL", "PRIMARY", "ADC")),
}
"""The vendor conventions of a scanner ADC map that the tests model."""


def write_vendor_adc(adc_mm2_s: np.ndarray, affine: np.ndarray, folder: str | Path,
                     vendor: str, *, number: int = 8) -> Path:
    """A map in mm2/s written as ``vendor``'s ADC series (:data:`VENDOR_ADC`) into ``folder``."""
    convention = VENDOR_ADC[vendor]
    stored = np.rint(convention.stored(np.clip(adc_mm2_s, 0, None) * 1e6))
    tags = {**EPI_DWI, "RescaleSlope": convention.rescale_slope,
            "ImageType": list(convention.image_type)}
    write_series_from_volume(stored, affine, folder, series_description="ADC",
                             series_number=number, study_uid=generate_uid(),
                             manufacturer=convention.manufacturer, tags=tags,
                             private=convention.private)
    return Path(folder)


def philips_study(folder: str | Path, *, with_dwi: bool = True) -> dict[int, Path]:
    """The FIELD-NOTES Philips export, small: 13 series, no ContrastBolusAgent anywhere.

    Roles expected: T1w 201, ceT1w 801 (3D, no contrast word), T2w 301, FLAIR 401, DWI 501
    (b = 0/1000); the ADC map 502 (ImageType ORIGINAL/PRIMARY/ADC, display-scaled median
    :data:`PHILIPS_ADC_DISPLAY_MEDIAN`); 503 registered DWI and 504 trace are derived; 101
    survey, 601 SWI and 701 BOLD are other; 901 (FLAIR) and 1001 (T1 SE) are the post-contrast
    repeats that place the injection.
    """
    series = [
        Series(101, "SURVEY", "100000", {"ScanningSequence": "GR", "RepetitionTime": 10.0,
                                          "EchoTime": 5.0}, shape=(12, 14, 3), seed=1),
        Series(201, "T1W_SE-TRA_FS", "100200", SE_T1, seed=2),
        Series(301, "T2W_TSE_TRA", "100500", TSE_T2, seed=3),
        Series(401, "T2W_FLAIR_TRA", "100800", FLAIR, seed=4),
        Series(601, "SWI_TRA", "101400", SWI, seed=8),
        Series(701, "BOLD_REST", "101600", EPI_DWI | {"RepetitionTime": 2000.0,
                                                     "EchoTime": 30.0}, kind="bold", seed=9),
        Series(801, "T1W_3D_TFE", "102000", GRE_3D_T1, affine=ISO_3D, shape=(14, 16, 14),
               seed=10),
        Series(901, "T2W_FLAIR_TRA", "102500", FLAIR, seed=11),
        Series(1001, "T1W_SE-TRA_FS", "103000", SE_T1, seed=12),
    ]
    if with_dwi:
        series += [
            Series(501, "DWI_TRA", "101100", EPI_DWI, kind="dwi", b_values=(0, 1000, 1000, 1000),
                   seed=5),
            Series(503, "Reg - DWI_TRA", "101100", EPI_DWI, kind="dwi",
                   image_type=("DERIVED", "PRIMARY", "DIFFUSION"), b_values=(0, 1000), seed=6),
            Series(504, "DWI_TRA", "101100", EPI_DWI | {"ImageType": ["DERIVED", "PRIMARY",
                                                                      "DIFFUSION", "TRACEW"]},
                   kind="dwi", b_values=(1000,), seed=7),
        ]
    series.append(Series(502, "dADC_DWI_TRA", "101100", EPI_DWI,
                         image_type=("ORIGINAL", "PRIMARY", "ADC"),
                         value=PHILIPS_ADC_DISPLAY_MEDIAN, private=philips_adc_private(),
                         seed=13))
    return write_study(folder, sorted(series, key=lambda s: s.number))


__all__ = ["AXIAL", "EPI_DWI", "FLAIR", "GRE_3D_T1", "ISO_3D", "PHILIPS",
           "PHILIPS_ADC_DISPLAY_MEDIAN", "SE_T1", "SWI", "Series", "TSE_T2", "VENDOR_ADC",
           "VendorAdc", "philips_adc_private", "philips_study", "volume", "write_study",
           "write_vendor_adc"]
