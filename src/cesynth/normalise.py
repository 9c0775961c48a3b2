"""Model-grid resampling and in-brain intensity normalisation, shared by training and prediction.

Grid and axis convention (one place, so training and ``cesynth predict`` agree):

* Every image is first reoriented to RAS canonical (:func:`nibabel.as_closest_canonical`), so
  array axis 0 runs left->right (x), axis 1 posterior->anterior (y), axis 2 inferior->superior (z).
* The model grid ``shape`` is the NIfTI array shape in that orientation, ``(x, y, z)``; the paper
  profile is ``(192, 256, 192)``, the demo profile a smaller one such as ``(64, 80, 64)``.
* Slices are axial: the slice axis is the last array axis, :data:`SLICE_AXIS` = 2 (z).
  :func:`to_slice_major` turns a volume into ``(slices, rows, cols) = (z, y, x)``, so a 3-slice
  patch of the paper grid is ``3 x 256 x 192`` as in the paper; :func:`from_slice_major` undoes it.
* Resizing keeps the field of view: the outer voxel edges of the native grid and the model grid
  coincide, the new voxel size is ``old extent / new shape`` per axis, and the affine is updated
  so the model-grid image sits at the same world position (direction cosines kept). Images are
  interpolated linearly, masks with nearest neighbour.

Normalisation: inside the brain mask, either histogram equalisation (``"histeq"``, default: the
empirical CDF of the in-mask intensities, scaled to [0, 1]) or percentile scaling
(``"percentile"``: clip to the (0.5, 99.5) percentiles, then scale to [0, 1]); zero outside the
mask. The same :func:`normalise` is applied to every modality, ADC and the CE-T1 target included.

Saturation (option ``saturation``, default ``exclude``): where more than ``saturation_min_share``
of the brain's voxels (and more than one) sit at the image's maximum on the native grid (a CE-T1
clipped at 32767), those voxels are left out of the method's reference statistics (the CDF, the
percentiles) and set to 1, the top of the scale; the rest is normalised as if they were absent.
Detection runs before any bias correction, and the saturated voxels reach the model grid as a
mask (nearest neighbour). An image without saturation is normalised exactly as before the option
existed.

The module is about 600 lines on purpose: the grid convention and the normalisation are
kept in one place (with :func:`prepare_subject`, which applies both) so that training and
``cesynth predict`` cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
from scipy import ndimage

from cesynth.bias_field import BIAS_CORRECTIONS, CORRECTED_MODALITIES, n4_corrected
from cesynth.io import InputError, check_same_grid, load_nifti, save_nifti, write_json

SLICE_AXIS = 2
"""Array axis of the slices (axial, z) in RAS canonical orientation."""

MODALITIES = ("T1w", "T2w", "adc", "FLAIR", "ceT1w")
"""Image keys accepted by :func:`prepare_subject`; ``T1w`` is required."""

OPTIONAL_MODALITIES = ("FLAIR",)
"""Listed as missing only when given as None (a model that does not take it never asks)."""

REQUIRED_MODALITIES = ("T1w",)

PERCENTILE_DEFAULTS = (0.5, 99.5)


@dataclass(frozen=True)
class ModelGrid:
    """The fixed matrix the model works on, as an RAS-canonical ``(x, y, z)`` array shape.

    Args:
        shape: the number of voxels along x, y and z (z = the slice axis).
    """

    shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise InputError("model grid", f"shape must be three positive integers, got {shape}")
        object.__setattr__(self, "shape", shape)

    def voxel_size_for(self, img: nib.Nifti1Image) -> tuple[float, float, float]:
        """Voxel size (mm) of the model grid covering the field of view of ``img``.

        Args:
            img: a 3D image, any orientation.

        Returns:
            The voxel size along the RAS-canonical x, y and z axes.
        """
        canonical = _canonical_3d(img)
        sizes = np.linalg.norm(self.affine_for(canonical)[:3, :3], axis=0)
        return tuple(float(s) for s in sizes)

    def affine_for(self, img: nib.Nifti1Image) -> np.ndarray:
        """Voxel-to-world affine of the model grid over the field of view of ``img``.

        Args:
            img: a 3D image, any orientation.

        Returns:
            The 4x4 affine; the voxel edges of both grids coincide at the field-of-view border.
        """
        canonical = _canonical_3d(img)
        return canonical.affine @ self._index_map(canonical.shape[:3])

    def resample(self, img: nib.Nifti1Image, *, is_mask: bool = False) -> nib.Nifti1Image:
        """Resize ``img`` (reoriented to RAS canonical) onto this grid.

        Args:
            img: a 3D image, any orientation.
            is_mask: nearest-neighbour interpolation and a uint8 0/1 output instead of linear
                interpolation and float32.

        Returns:
            The model-grid image.
        """
        canonical = _canonical_3d(img)
        index_map = self._index_map(canonical.shape[:3])
        data = np.asarray(canonical.dataobj, dtype=np.float32)
        if is_mask:
            data = (data > 0).astype(np.float32)
        resized = ndimage.affine_transform(
            data,
            matrix=index_map[:3, :3],
            offset=index_map[:3, 3],
            output_shape=self.shape,
            order=0 if is_mask else 1,
            mode="nearest",  # upsampled border voxels lie half a voxel beyond the native centres
        )
        out_dtype = np.uint8 if is_mask else np.float32
        out = nib.Nifti1Image(resized.astype(out_dtype), canonical.affine @ index_map)
        out.set_qform(out.affine, code=1)
        out.set_sform(out.affine, code=1)
        return out

    def _index_map(self, native_shape: Sequence[int]) -> np.ndarray:
        """Model-grid voxel index -> native voxel index (diagonal: scale plus half-voxel shift)."""
        scale = np.asarray(native_shape, dtype=float) / np.asarray(self.shape, dtype=float)
        index_map = np.eye(4)
        index_map[:3, :3] = np.diag(scale)
        index_map[:3, 3] = 0.5 * scale - 0.5
        return index_map


def to_model_grid(
    img: nib.Nifti1Image, shape: Sequence[int], *, is_mask: bool = False
) -> nib.Nifti1Image:
    """Reorient ``img`` to RAS canonical and resize it to ``shape``, keeping its field of view.

    Args:
        img: a 3D image (a trailing singleton 4th axis is accepted).
        shape: the model grid as an RAS-canonical ``(x, y, z)`` array shape.
        is_mask: nearest neighbour and uint8 0/1 output (for masks) instead of linear and float32.

    Returns:
        The model-grid image, RAS canonical, with its affine updated.
    """
    return ModelGrid(tuple(shape)).resample(img, is_mask=is_mask)


def to_slice_major(volume: np.ndarray) -> np.ndarray:
    """View an RAS-canonical ``(x, y, z)`` volume as ``(slices, rows, cols) = (z, y, x)``.

    Args:
        volume: array with the model-grid axis order.

    Returns:
        The transposed view; ``result[k:k + 3]`` is a 3-slice axial patch.
    """
    return np.transpose(volume, (2, 1, 0))


def from_slice_major(volume: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_slice_major`: ``(z, y, x)`` back to ``(x, y, z)``.

    Args:
        volume: a ``(slices, rows, cols)`` array.

    Returns:
        The transposed view in model-grid axis order.
    """
    return np.transpose(volume, (2, 1, 0))


def foreground_slice_range(
    mask: np.ndarray, axis: int = SLICE_AXIS, *, who: str = "brain mask"
) -> tuple[int, int]:
    """First and last slice (inclusive) along ``axis`` that hold any mask voxel.

    Args:
        mask: the brain mask (non-zero = brain).
        axis: the slice axis (default: axial, :data:`SLICE_AXIS`).
        who: names the mask in the error message.

    Returns:
        ``(first, last)``, both inclusive.

    Raises:
        InputError: the mask is empty.
    """
    other_axes = tuple(a for a in range(mask.ndim) if a != axis % mask.ndim)
    occupied = np.flatnonzero(np.any(np.asarray(mask) != 0, axis=other_axes))
    if occupied.size == 0:
        raise InputError(who, "brain mask is empty")
    return int(occupied[0]), int(occupied[-1])


def _histeq(values: np.ndarray, *, nbins: int | None = None) -> np.ndarray:
    """Empirical CDF of ``values`` scaled so the smallest maps to 0 and the largest to 1.

    ``nbins=None`` uses the exact CDF (every distinct value its own bin); an integer bins the
    values first, as ``skimage.exposure.equalize_hist`` does, interpolating between bin centres.
    """
    if nbins is None:
        levels, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
        cdf = np.cumsum(counts, dtype=np.float64)
        cdf_of_values = cdf[inverse.ravel()]
    else:
        counts, edges = np.histogram(values, bins=int(nbins))
        cdf = np.cumsum(counts, dtype=np.float64)
        centres = 0.5 * (edges[:-1] + edges[1:])
        cdf_of_values = np.interp(values, centres, cdf)
    lowest, total = cdf_of_values.min(), float(values.size)
    if total == lowest:  # a constant image carries no contrast
        return np.zeros_like(values, dtype=np.float32)
    return ((cdf_of_values - lowest) / (total - lowest)).astype(np.float32)


def _percentile(
    values: np.ndarray, *, p_low: float = PERCENTILE_DEFAULTS[0],
    p_high: float = PERCENTILE_DEFAULTS[1],
) -> np.ndarray:
    """Clip ``values`` to their ``[p_low, p_high]`` percentiles and scale that range to [0, 1]."""
    if not 0.0 <= p_low < p_high <= 100.0:
        raise InputError("percentile normalisation", f"need 0 <= p_low < p_high <= 100, "
                         f"got ({p_low}, {p_high})")
    low, high = np.percentile(values, [p_low, p_high])
    if high <= low:
        return np.zeros_like(values, dtype=np.float32)
    return ((np.clip(values, low, high) - low) / (high - low)).astype(np.float32)


Normaliser = Callable[..., np.ndarray]
NORMALISERS: dict[str, Normaliser] = {"histeq": _histeq, "percentile": _percentile}
"""Normalisation methods by name: each maps the 1D in-mask intensities to [0, 1]."""


SATURATION_HANDLING = ("exclude", "keep")
"""``exclude``: saturated voxels are left out of the reference statistics and set to 1;
``keep``: they are normalised like any other voxel (what records before the option did)."""
SATURATION_MIN_SHARE = 1e-4
"""Share of the brain's voxels at the image maximum above which the image counts as saturated
(a continuous image holds its maximum in one voxel or a few: 6e-7 of a 1 mm phantom brain)."""
_IMAGE_OPTIONS = {"bias_correction": "none", "saturation": "exclude",
                  "saturation_min_share": SATURATION_MIN_SHARE}

NORMALISER_DEFAULTS: dict[str, dict[str, Any]] = {
    "histeq": {"nbins": None, **_IMAGE_OPTIONS},
    "percentile": {"p_low": PERCENTILE_DEFAULTS[0], "p_high": PERCENTILE_DEFAULTS[1],
                   **_IMAGE_OPTIONS},
}
"""Every option of each method with its default (``nbins=None``: the exact empirical CDF;
``bias_correction``: ``none`` or ``n4``, applied on the native grid before resampling,
:mod:`cesynth.bias_field`; ``saturation`` and ``saturation_min_share``: see the module
docstring)."""
_GRID_OPTIONS = tuple(_IMAGE_OPTIONS)
"""Options applied to the native image before it reaches the model grid, not by the method."""


def normaliser_options(method: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A method's parameters spelled out: its defaults, updated with ``options``.

    Args:
        method: a key of :data:`NORMALISERS`.
        options: options given (a subset of the method's).

    Returns:
        Every option of the method with its value (what a preprocessing record stores).

    Raises:
        InputError: unknown method or option.
    """
    if method not in NORMALISER_DEFAULTS:
        raise InputError(f"normalisation method {method!r}",
                         f"unknown; choose one of {sorted(NORMALISERS)}")
    unknown = sorted(set(options or {}) - set(NORMALISER_DEFAULTS[method]))
    if unknown:
        raise InputError(f"normalisation method {method!r}", f"unknown options {unknown}; "
                         f"expected {sorted(NORMALISER_DEFAULTS[method])}")
    return {**NORMALISER_DEFAULTS[method], **dict(options or {})}


def normalise(
    data: np.ndarray, mask: np.ndarray, method: str = "histeq",
    saturated: np.ndarray | None = None, **options: Any
) -> np.ndarray:
    """Normalise intensities inside ``mask`` to [0, 1]; zero outside.

    Args:
        data: the image array.
        mask: the brain mask, same shape (non-zero = brain).
        method: a key of :data:`NORMALISERS` (``"histeq"`` or ``"percentile"``).
        saturated: voxels (same shape, non-zero = saturated) left out of the method's reference
            statistics and set to 1; None, or a mask covering no brain voxel or all of them,
            leaves every voxel in.
        **options: method options (``nbins`` for histeq; ``p_low``, ``p_high`` for percentile).

    Returns:
        A float32 array in [0, 1], exactly 0 outside the mask. Non-finite values inside the mask
        are treated as 0 before normalisation; a constant in-mask image gives all zeros.

    Raises:
        InputError: unknown method, shape mismatch, or an empty mask.
    """
    if method not in NORMALISERS:
        raise InputError(f"normalisation method {method!r}",
                         f"unknown; choose one of {sorted(NORMALISERS)}")
    data = np.asarray(data)
    inside = np.asarray(mask) != 0
    if data.shape != inside.shape:
        raise InputError("normalise", f"image shape {data.shape} != mask shape {inside.shape}")
    if not inside.any():
        raise InputError("brain mask", "brain mask is empty")
    values = np.nan_to_num(data[inside].astype(np.float64), nan=0.0)
    out = np.zeros(data.shape, dtype=np.float32)
    method_options = {key: value for key, value in options.items() if key not in _GRID_OPTIONS}
    excluded = None if saturated is None else np.asarray(saturated)[inside] != 0
    if excluded is None or excluded.all() or not excluded.any():
        out[inside] = np.clip(NORMALISERS[method](values, **method_options), 0.0, 1.0)
        return out
    scaled = np.ones(values.shape, dtype=np.float32)
    scaled[~excluded] = np.clip(NORMALISERS[method](values[~excluded], **method_options),
                                0.0, 1.0)
    out[inside] = scaled
    return out


def in_mask_stats(data: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Summary of the intensities inside ``mask`` (before normalisation), for the sidecar and QC.

    Args:
        data: the image array.
        mask: the brain mask, same shape.

    Returns:
        ``n_voxels``, ``mean``, ``std``, ``min``, ``p0.5``, ``median``, ``p99.5``, ``max``.
    """
    values = np.asarray(data)[np.asarray(mask) != 0].astype(np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"n_voxels": 0}
    p_low, median, p_high = np.percentile(values, [0.5, 50.0, 99.5])
    return {
        "n_voxels": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
        "min": float(values.min()), "p0.5": float(p_low), "median": float(median),
        "p99.5": float(p_high), "max": float(values.max()),
    }


class Saturation(NamedTuple):
    """An image's maximum (``level``), and its brain voxels at it: how many and what share."""

    level: float
    voxels: int
    share: float

    def found(self, min_share: float) -> bool:
        """Saturated: more than ``min_share`` of the brain, and more than one voxel, at the
        maximum (a lone brightest voxel is no plateau however small the brain)."""
        return self.voxels > 1 and self.share > min_share


def saturation(data: np.ndarray, mask: np.ndarray) -> Saturation:
    """The image's maximum and the brain voxels at it.

    Args:
        data: the image (non-finite voxels ignored).
        mask: the brain mask, same shape.

    Returns:
        The largest finite value of the whole image, and the count and share of the finite
        brain voxels equal to it (0 for an empty brain).
    """
    finite = np.isfinite(data)
    if not finite.any():
        return Saturation(math.nan, 0, 0.0)
    level = float(data[finite].max())
    brain = np.asarray(mask, dtype=bool) & finite
    n_brain = int(brain.sum())
    voxels = int(np.count_nonzero(data[brain] >= level)) if n_brain else 0
    return Saturation(level, voxels, voxels / n_brain if n_brain else 0.0)


def prepare_subject(
    images: Mapping[str, str | Path | None],
    mask_path: str | Path,
    out_paths: Mapping[str, str | Path],
    out_mask_path: str | Path,
    shape: Sequence[int],
    method: str = "histeq",
    sidecar_path: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Resample a subject's registered images and mask to the model grid and normalise them.

    Everything is computed before anything is written, so a bad input leaves no outputs.

    Args:
        images: ``{"T1w", "T2w", "adc", "FLAIR", "ceT1w"} -> path`` on the native CE-T1 grid;
            ``None`` or an absent key marks a missing modality (nothing written, listed in
            ``missing``; the FLAIR only when given as None). ``T1w`` is required.
        mask_path: the brain mask on the native CE-T1 grid.
        out_paths: output path per present modality (``*_space-model_desc-norm_*.nii.gz``).
        out_mask_path: output path of the model-grid mask.
        shape: the model grid, RAS-canonical ``(x, y, z)``.
        method: normalisation method (see :data:`NORMALISERS`).
        sidecar_path: where to write the returned dict as JSON (optional).
        **options: normalisation options passed to :func:`normalise`.

    Returns:
        The sidecar: ``shape``, ``voxel_size_mm``, ``orientation``, ``slice_axis``,
        ``foreground_slices`` ``[first, last]`` (inclusive, on the model grid), ``method``,
        ``options``, ``modalities`` (written), ``missing``, ``stats`` (per-modality in-mask
        intensities before normalisation).

    Raises:
        InputError: unknown or missing required modality, no output path, unreadable file,
            images not on the mask's grid, or an empty mask.
    """
    present = _check_modalities(images, out_paths)
    grid = ModelGrid(tuple(shape))
    native_mask, mask_img = _model_mask(mask_path, grid)
    mask = np.asarray(mask_img.dataobj)
    first, last = foreground_slice_range(mask, who=str(mask_path))

    outputs: dict[str, np.ndarray] = {}
    stats: dict[str, dict[str, float]] = {}
    for name, path in present.items():
        outputs[name], stats[name] = _normalised(path, native_mask, grid, mask, method, options,
                                                 modality=name)

    for name, data in outputs.items():
        save_nifti(data, mask_img.affine, out_paths[name], dtype=np.float32)
    save_nifti(mask, mask_img.affine, out_mask_path, dtype=np.uint8)

    sidecar = {
        **_grid_sidecar(grid, native_mask, first, last),
        "method": method,
        "options": dict(options),
        "modalities": list(present),
        "missing": [m for m in MODALITIES if m not in present
                    and (m not in OPTIONAL_MODALITIES or m in images)],
        "stats": stats,
    }
    if sidecar_path is not None:
        write_json(sidecar, sidecar_path)
    return sidecar


def prepare_mask(
    mask_path: str | Path,
    out_mask_path: str | Path,
    shape: Sequence[int],
    sidecar_path: str | Path | None = None,
) -> dict[str, Any]:
    """Resample one brain mask to the model grid and record its foreground slices.

    Args:
        mask_path: the brain mask on the native CE-T1 grid.
        out_mask_path: output path of the model-grid mask (uint8).
        shape: the model grid, RAS-canonical ``(x, y, z)``.
        sidecar_path: where to write the returned dict as JSON (optional).

    Returns:
        ``shape``, ``voxel_size_mm``, ``orientation``, ``slice_axis`` and ``foreground_slices``.
    """
    grid = ModelGrid(tuple(shape))
    native_mask, mask_img = _model_mask(mask_path, grid)
    mask = np.asarray(mask_img.dataobj)
    first, last = foreground_slice_range(mask, who=str(mask_path))
    save_nifti(mask, mask_img.affine, out_mask_path, dtype=np.uint8)
    sidecar = _grid_sidecar(grid, native_mask, first, last)
    if sidecar_path is not None:
        write_json(sidecar, sidecar_path)
    return sidecar


def resample_mask(mask_path: str | Path, out_mask_path: str | Path,
                  shape: Sequence[int]) -> int:
    """Resample a label mask (e.g. an expert tumor mask) from the CE-T1 grid to the model grid.

    Args:
        mask_path: the mask on the native CE-T1 grid.
        out_mask_path: output path of the model-grid mask (uint8).
        shape: the model grid, RAS-canonical ``(x, y, z)``.

    Returns:
        The number of mask voxels on the model grid (0 when the lesion is smaller than a voxel).
    """
    _, mask_img = _model_mask(mask_path, ModelGrid(tuple(shape)))
    mask = np.asarray(mask_img.dataobj)
    save_nifti(mask, mask_img.affine, out_mask_path, dtype=np.uint8)
    return int(np.count_nonzero(mask))


def prepare_image(
    image_path: str | Path,
    mask_path: str | Path,
    out_path: str | Path,
    shape: Sequence[int],
    method: str = "histeq",
    modality: str | None = None,
    **options: Any,
) -> dict[str, float]:
    """Resample one registered image to the model grid and normalise it inside the brain mask.

    The per-modality counterpart of :func:`prepare_subject`, for pipelines that run one job per
    image; both give identical voxels.

    Args:
        image_path: the image on the native CE-T1 grid.
        mask_path: the brain mask on the native CE-T1 grid.
        out_path: output path (``*_space-model_desc-norm_*.nii.gz``).
        shape: the model grid, RAS-canonical ``(x, y, z)``.
        method: normalisation method (see :data:`NORMALISERS`).
        modality: the image's modality (the bias correction skips the ADC).
        **options: normalisation options (see :data:`NORMALISER_DEFAULTS`).

    Returns:
        In-mask intensity statistics of the image on the model grid, before normalisation.
    """
    grid = ModelGrid(tuple(shape))
    native_mask, mask_img = _model_mask(mask_path, grid)
    mask = np.asarray(mask_img.dataobj)
    foreground_slice_range(mask, who=str(mask_path))
    data, stats = _normalised(image_path, native_mask, grid, mask, method, options,
                              modality=modality)
    save_nifti(data, mask_img.affine, out_path, dtype=np.float32)
    return stats


def write_qc_row(
    stats: Mapping[str, float], modality: str, scan_id: str, out_tsv: str | Path
) -> dict[str, Any]:
    """Write one model-grid image's QC row; an ADC map's brain median is checked for plausibility.

    Args:
        stats: the in-mask statistics :func:`prepare_image` returned (``brain_<stat>`` columns).
        modality: the image's modality (:data:`MODALITIES`).
        scan_id: the subject (and session) label.
        out_tsv: the one-row QC table to write.

    Returns:
        The statistics and flags (for MLflow).
    """
    from cesynth import qc

    flags = qc.plausibility_flags(adc_median_mm2_s=stats["median"]) if modality == "adc" else {}
    metrics = {"modality": modality, **{f"brain_{key}": value for key, value in stats.items()}}
    qc.write_row(qc.qc_row("normalise", scan_id, metrics, flags), out_tsv)
    return {**stats, **flags}


def _grid_sidecar(grid: ModelGrid, native_mask: nib.Nifti1Image, first: int, last: int
                  ) -> dict[str, Any]:
    return {
        "shape": list(grid.shape),
        "voxel_size_mm": list(grid.voxel_size_for(native_mask)),
        "orientation": "RAS",
        "slice_axis": SLICE_AXIS,
        "foreground_slices": [first, last],
    }


def _model_mask(mask_path: str | Path, grid: ModelGrid) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    native_mask = load_nifti(mask_path)
    return native_mask, grid.resample(native_mask, is_mask=True)


def _normalised(path: str | Path, native_mask: nib.Nifti1Image, grid: ModelGrid, mask: np.ndarray,
                method: str, options: Mapping[str, Any], *, modality: str | None = None
                ) -> tuple[np.ndarray, dict[str, float]]:
    """The model-grid image normalised, and its in-mask statistics with its saturation
    (``saturated_share`` on the native grid, ``saturated_excluded`` model-grid voxels)."""
    native = load_nifti(path)
    check_same_grid(native, native_mask, path, "the CE-T1 brain mask",
                    hint="register it first")
    correction = options.get("bias_correction", "none")
    if correction not in BIAS_CORRECTIONS:
        raise InputError("normalise.bias_correction", f"{correction!r}: choose one of "
                                                      f"{list(BIAS_CORRECTIONS)}")
    share, saturated = _saturated_voxels(native, native_mask, grid, options)
    if correction == "n4" and modality in CORRECTED_MODALITIES:
        native = nib.Nifti1Image(n4_corrected(native, native_mask), native.affine, native.header)
    data = np.asarray(grid.resample(native).dataobj)
    excluded = 0 if saturated is None else int(np.count_nonzero((saturated != 0) & (mask != 0)))
    stats = {**in_mask_stats(data, mask), "saturated_share": share,
             "saturated_excluded": excluded}
    return normalise(data, mask, method, saturated=saturated, **options), stats


def _saturated_voxels(native: nib.Nifti1Image, native_mask: nib.Nifti1Image, grid: ModelGrid,
                      options: Mapping[str, Any]) -> tuple[float, np.ndarray | None]:
    """The native image's share of brain voxels at its maximum, and the voxels to exclude on
    the model grid (None unless ``saturation: exclude`` and the share exceeds the limit)."""
    handling = options.get("saturation", _IMAGE_OPTIONS["saturation"])
    if handling not in SATURATION_HANDLING:
        raise InputError("normalise.saturation", f"{handling!r}: choose one of "
                                                 f"{list(SATURATION_HANDLING)}")
    data = np.asarray(native.dataobj, dtype=np.float64)
    brain = np.asarray(native_mask.dataobj) != 0
    found = saturation(data, brain)
    limit = float(options.get("saturation_min_share", SATURATION_MIN_SHARE))
    if handling == "keep" or not found.found(limit):
        return found.share, None
    at_level = nib.Nifti1Image((data >= found.level).astype(np.uint8), native.affine)
    return found.share, np.asarray(grid.resample(at_level, is_mask=True).dataobj)


def _check_modalities(
    images: Mapping[str, str | Path | None], out_paths: Mapping[str, str | Path]
) -> dict[str, Path]:
    """The present modalities in :data:`MODALITIES` order, after checking keys and outputs."""
    unknown = sorted(set(images) - set(MODALITIES))
    if unknown:
        raise InputError("prepare_subject", f"unknown modalities {unknown}; expected {MODALITIES}")
    present = {m: Path(images[m]) for m in MODALITIES if images.get(m) is not None}
    for name in REQUIRED_MODALITIES:
        if name not in present:
            raise InputError("prepare_subject", f"{name} is required but missing")
    without_output = [m for m in present if out_paths.get(m) is None]
    if without_output:
        raise InputError("prepare_subject", f"no output path for {without_output}")
    return present


def _canonical_3d(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """``img`` reoriented to RAS canonical, with a trailing singleton 4th axis dropped."""
    if img.ndim == 4 and img.shape[3] == 1:
        img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., 0], img.affine, img.header)
    if img.ndim != 3:
        name = img.get_filename() or "image"
        raise InputError(name, f"expected a 3D image, got shape {img.shape}")
    return nib.as_closest_canonical(img)
