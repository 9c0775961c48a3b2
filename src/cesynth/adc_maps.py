"""Given ADC (or MD) maps: their unit, whether they are MD, and their conversion to mm2/s.

A dataset or a new patient may come with an ADC map instead of a DWI (a scanner's map, or DTIFIT's
mean diffusivity, accepted as an ADC). Its unit is read from its median over the brain
(:func:`detect_adc_unit`, the units of :data:`ADC_UNITS`), its JSON sidecar says whether it is MD
(:func:`adc_map_kind`), and :func:`convert_adc_map_file` writes it in mm2/s, float32, clipped as
the fit (:mod:`cesynth.adc`) clips. The workflow's map job and ``cesynth predict --adc`` both use
it.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from cesynth.io import InputError, load_nifti, read_json, save_nifti

PathLike = str | os.PathLike

#: Units a given ADC (or MD) map may come in: name -> factor to mm2/s, with the window (in mm2/s)
#: the median over the nonzero region must fall in. The windows are a factor 10 wide and the
#: units a factor 1000 apart, so at most one unit fits any median. Brain ADC medians are about
#: 0.7e-3 to 1.5e-3 mm2/s (more with much CSF or edema).
ADC_UNITS: dict[str, float] = {
    "mm2/s": 1.0,
    "1e-3 mm2/s": 1e-3,   # um2/ms, "x 10^-3 mm2/s"
    "1e-6 mm2/s": 1e-6,   # um2/s, the scanner convention (Siemens, GE, Philips)
    "m2/s": 1e6,          # SI: 1e-3 mm2/s = 1e-9 m2/s
}
ADC_MEDIAN_WINDOW_MM2_S = (3e-4, 3e-3)
"""The brain's median ADC in mm2/s that a unit must give for a map to be read in that unit."""

_MD_PHRASES = ("mean diffusivity", "dtifit")  # besides the word "MD"


@dataclass(frozen=True)
class AdcUnit:
    """How a given ADC map's values were read.

    Attributes:
        unit: the detected unit (a key of :data:`ADC_UNITS`).
        scale: the factor to mm2/s (``ADC_UNITS[unit]``).
        median_raw: the median of the map over its region, in its own unit.
    """

    unit: str
    scale: float
    median_raw: float

    @property
    def converted(self) -> bool:
        """True when the values were multiplied (not already mm2/s)."""
        return self.scale != 1.0

    def describe(self) -> str:
        """``"mm2/s (as given)"`` or ``"1e-6 mm2/s, x 1e-06 to mm2/s"``."""
        if not self.converted:
            return "mm2/s (as given)"
        return f"{self.unit}, x {self.scale:g} to mm2/s"


def detect_adc_unit(data: np.ndarray, name: str | os.PathLike = "ADC map",
                    mask: np.ndarray | None = None) -> AdcUnit:
    """Find the unit of an ADC map from its median over the brain (or its nonzero region).

    The median is taken over the finite, positive voxels (inside ``mask`` when given): scanner
    and DTIFIT maps are zero outside the head or brain.

    Args:
        data: the map, any shape.
        name: the file, named in the error.
        mask: optional boolean region of ``data``'s shape (the brain).

    Returns:
        The :class:`AdcUnit`.

    Raises:
        InputError: on ``name``, when the map has no positive voxel, or its median fits no unit
            of :data:`ADC_UNITS` (``ADC median 3.2e+04 is in no known unit (...)``).
    """
    values = np.asarray(data)
    region = np.isfinite(values) & (values > 0)
    if mask is not None:
        region &= np.asarray(mask, dtype=bool)
    if not region.any():
        raise InputError(name, "ADC map has no positive voxel")
    median = float(np.median(values[region]))
    low, high = ADC_MEDIAN_WINDOW_MM2_S
    for unit, scale in ADC_UNITS.items():
        if low <= median * scale <= high:
            return AdcUnit(unit, scale, median)
    raise InputError(name, f"ADC median {median:.2g} is in no known unit "
                           f"({', '.join(ADC_UNITS)})")


def adc_map_kind(sidecar_path: PathLike | None) -> str:
    """``"MD"`` when a map's JSON sidecar says it is a mean diffusivity map, else ``"ADC"``.

    Args:
        sidecar_path: the map's ``_adc.json`` sidecar, or None (absent).

    Returns:
        ``"MD"`` when its ``Description`` or ``Source`` names MD (DTIFIT's mean diffusivity,
        accepted as an ADC), else ``"ADC"``.

    Raises:
        InputError: the sidecar exists but is not a JSON object.
    """
    if sidecar_path is None or not Path(sidecar_path).is_file():
        return "ADC"
    sidecar = read_json(sidecar_path)
    if not isinstance(sidecar, dict):
        raise InputError(sidecar_path, "JSON sidecar is not an object")
    text = " ".join(str(sidecar.get(key, "")) for key in ("Description", "Source"))
    words = set(re.split(r"[^A-Za-z0-9]+", text))
    if "MD" in words or any(phrase in text.lower() for phrase in _MD_PHRASES):
        return "MD"
    return "ADC"


def adc_sidecar_path(map_path: PathLike) -> Path:
    """The JSON sidecar of an ADC map: ``..._adc.nii.gz`` -> ``..._adc.json``."""
    path = Path(map_path)
    for suffix in (".nii.gz", ".nii"):
        if path.name.endswith(suffix):
            return path.with_name(path.name[: -len(suffix)] + ".json")
    return path.with_suffix(".json")


@dataclass(frozen=True)
class AdcMapStats:
    """Summary of a given ADC (or MD) map brought to mm2/s.

    Attributes:
        source: ``"given ADC map"`` or ``"given MD map"``.
        unit: the unit the map was in (a key of :data:`ADC_UNITS`).
        scale: the factor applied to reach mm2/s.
        unit_conversion: the conversion in words (:meth:`AdcUnit.describe`).
        n_voxels: voxels with a positive ADC after conversion.
        n_clipped_low: positive voxels below ``min_adc`` (set to it); negatives are set to 0.
        n_clipped_high: voxels above ``max_adc`` (set to it).
        n_nonfinite: NaN or inf voxels (set to 0).
        median_in_mask: median ADC (mm2/s) over the positive voxels, after clipping.
    """

    source: str
    unit: str
    scale: float
    unit_conversion: str
    n_voxels: int
    n_clipped_low: int
    n_clipped_high: int
    n_nonfinite: int
    median_in_mask: float

    def to_dict(self) -> dict:
        """The statistics as a JSON-ready dictionary."""
        return asdict(self)


def convert_adc_map_file(
    map_path: PathLike,
    out_path: PathLike,
    *,
    who: str | None = None,
    sidecar_path: PathLike | None = None,
    min_adc: float = 0.0,
    max_adc: float = 4e-3,
) -> AdcMapStats:
    """Bring a given ADC (or MD) map to mm2/s, float32, on its own grid, and write it atomically.

    The one place where a given map's unit is decided (:func:`detect_adc_unit`): the workflow's
    map job and ``cesynth predict --adc`` both call it. Non-finite voxels become 0, negative
    ones 0; positive values outside ``[min_adc, max_adc]`` are clipped as the fit clips them.

    Args:
        map_path: the 3D map (a 4D image with one volume is accepted).
        out_path: the output NIfTI (header ``intent_name`` "ADC mm2/s").
        who: names the subject in errors (``sub-01``): the error reads ``who: <file>: ...``;
            None names the file alone.
        sidecar_path: the map's JSON sidecar; default :func:`adc_sidecar_path` when it exists.
        min_adc: lower limit (mm2/s).
        max_adc: upper limit (mm2/s).

    Returns:
        The :class:`AdcMapStats`.

    Raises:
        InputError: unreadable or not 3D, no positive voxel, or in no known unit.
    """
    path = Path(map_path)
    try:
        img = load_nifti(path)
        data = np.asarray(img.get_fdata(dtype=np.float32))
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise InputError(path, f"expected a 3D ADC map, got shape {tuple(data.shape)}")
        unit = detect_adc_unit(data, path.name)
    except InputError as err:
        if who is None:
            raise
        problem = err.problem.replace(str(path), path.name)
        raise InputError(who, f"{path.name}: {problem}") from err
    if sidecar_path is None:
        sidecar_path = adc_sidecar_path(path)
    kind = adc_map_kind(sidecar_path)
    finite = np.isfinite(data)
    adc = np.where(finite, data, 0).astype(np.float32) * np.float32(unit.scale)
    positive = adc > 0
    n_low = int(np.count_nonzero(positive & (adc < np.float32(min_adc))))
    n_high = int(np.count_nonzero(adc > np.float32(max_adc)))
    adc[~positive] = 0.0
    adc[positive] = np.clip(adc[positive], np.float32(min_adc), np.float32(max_adc))
    values = adc[positive]
    header = nib.Nifti1Header()
    header["intent_name"] = b"ADC mm2/s"
    save_nifti(adc, img.affine, out_path, dtype=np.float32, header=header)
    return AdcMapStats(
        source=f"given {kind} map", unit=unit.unit, scale=unit.scale,
        unit_conversion=unit.describe(), n_voxels=int(values.size), n_clipped_low=n_low,
        n_clipped_high=n_high, n_nonfinite=int(np.count_nonzero(~finite)),
        median_in_mask=float(np.median(values)) if values.size else 0.0,
    )


__all__ = ["ADC_MEDIAN_WINDOW_MM2_S", "ADC_UNITS", "AdcMapStats", "AdcUnit", "adc_map_kind",
           "adc_sidecar_path", "convert_adc_map_file", "detect_adc_unit"]
