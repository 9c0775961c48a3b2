"""Apparent diffusion coefficient (ADC) maps fitted from diffusion-weighted images.

Method (the paper's: ADC = -1/b ln(S(b)/S0), least squares over b = 0, 500, 1000 s/mm2):

1. Volumes are grouped into shells by b-value (``tolerance`` s/mm2, default 50). Within a shell the
   directions are averaged with the *geometric* mean, which gives the trace-weighted image:
   for three orthogonal directions ``(prod_i S0 exp(-b D_i))^(1/3) = S0 exp(-b trace(D)/3)``.
   Several b=0 volumes are averaged the same way (geometric mean). The fit below is linear in
   ``ln S``, so the geometric mean (the mean of the logs) is the average the fit is consistent with;
   it is also what MRtrix3's ``dwi2adc`` implicitly uses (see below).
2. A log-linear least-squares line ``ln S(b) = ln S0 - b ADC`` is fitted per voxel in closed form
   (a fixed linear combination of the per-shell logs), vectorised over the volume in float32.

Relation to MRtrix3 ``dwi2adc`` (3.0.3, ``cmd/dwi2adc.cpp``): it solves the unweighted
least-squares problem over *all volumes* with the pseudo-inverse of ``[1, -b]``, taking
``ln S`` of each volume (a sample equal to 0 is given log value 1e-12, a negative one gives NaN),
with no mask, threshold or clipping; it writes S0 then ADC. Grouping volumes by shell, an
all-volume fit equals the fit over the per-shell geometric means *weighted by the number of
volumes per shell* (exactly so when every volume of a shell has the same b-value). Our default,
``weighting="shell"``, gives every shell the same weight, as the method asks (one point per
b-value); it equals ``dwi2adc`` whenever all shells hold the same number of volumes.
``weighting="volume"`` reproduces ``dwi2adc`` for any direction counts.

Robustness: a zero, negative or non-finite sample makes its shell's geometric mean 0, which is
clamped to ``SIGNAL_FLOOR`` before the log (such voxels are counted), so the output never holds
NaN or inf. Voxels outside the mask, or whose b=0 signal is at or below a noise threshold, are
set to 0 (automatic threshold: ``AUTO_THRESHOLD_FRACTION`` times the 99th percentile of the b=0
signal, inside the mask when there is one; it drops air and background noise, while white
matter, the darkest brain tissue at b=0, sits near a quarter of the CSF signal). Fitted ADCs
outside ``[min_adc, max_adc]`` are clipped to the limits and counted.

Speed: everything runs in float32, one log per volume, in place and in the memory order of the
data (NIfTI arrays are Fortran-ordered); no 4-D float64 temporaries.

A given ADC or MD map (no DWI) is brought to mm2/s by :mod:`cesynth.adc_maps`; the QC row of
both ADC jobs, with the error against a phantom's true ADC, is :mod:`cesynth.adc_qc`. This
module stays a little over 500 lines because the fit is one concern: the gradient files, the
shell grouping, the vectorised fit and its file wrapper share the conventions above.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from cesynth.io import (
    InputError,
    check_finite,
    check_output_file,
    check_outputs,
    check_same_grid,
    check_voxel_sizes,
    load_nifti,
    save_nifti,
)

PathLike = str | os.PathLike

#: A shell mean of 0 (a zero, negative or non-finite sample) is clamped to this before the log.
SIGNAL_FLOOR = 1e-6
#: Automatic noise threshold: this fraction of the 99th percentile of the b=0 signal.
AUTO_THRESHOLD_FRACTION = 0.05
#: A fit clipping more of its voxels than this is refused (the map would be the clip limits).
MAX_CLIPPED_FRACTION = 0.5
#: A fit clipping more of its voxels than this is logged as a warning.
WARN_CLIPPED_FRACTION = 0.1
_PERCENTILE_SAMPLE = 1_000_003  # at most this many voxels feed the automatic threshold


@dataclass(frozen=True)
class AdcStats:
    """Summary of one ADC fit.

    Attributes:
        n_voxels_fitted: voxels inside the mask with b=0 signal above the noise threshold.
        n_clipped_low: fitted voxels whose ADC was below ``min_adc`` (set to ``min_adc``).
        n_clipped_high: fitted voxels whose ADC was above ``max_adc`` (set to ``max_adc``).
        n_nonpositive_signal: fitted voxels with at least one sample that was zero, negative or
            not finite (its shell's mean was clamped to the signal floor before the log).
        median_in_mask: median ADC (mm2/s) over the fitted voxels, after clipping (0 if none).
        b_values: the shell b-values (s/mm2) used in the fit.
        preferred_shells: True when they are the preferred set (``ingest.b_values``, the
            paper's 0/500/1000); False when that set was incomplete and every shell present
            was fitted (:func:`choose_shells`).
    """

    n_voxels_fitted: int
    n_clipped_low: int
    n_clipped_high: int
    n_nonpositive_signal: int
    median_in_mask: float
    b_values: tuple[float, ...]
    preferred_shells: bool = True

    def to_dict(self) -> dict:
        """The statistics as a JSON-ready dictionary."""
        return asdict(self)


# ----------------------------------------------------------------------------- gradient files


def read_bvals_bvecs(
    bval_path: PathLike, bvec_path: PathLike, n_volumes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read FSL gradient files and check them against the number of DWI volumes.

    Args:
        bval_path: FSL ``.bval`` file: one row of b-values in s/mm2 (one per line also accepted).
        bvec_path: FSL ``.bvec`` file: three rows (x, y, z), one column per volume.
        n_volumes: number of volumes in the DWI (its 4th dimension).

    Returns:
        ``(bvals, bvecs)``: float64 arrays of shape ``(n_volumes,)`` and ``(3, n_volumes)``.

    Raises:
        InputError: naming the file that is missing, malformed or of the wrong length.
    """
    bvals = _read_numbers(bval_path)
    if bvals.ndim == 2 and 1 in bvals.shape:
        bvals = bvals.ravel()
    if bvals.ndim != 1:
        raise InputError(bval_path, f"expected one row of b-values, found shape {bvals.shape}")
    if bvals.size != n_volumes:
        raise InputError(bval_path, f"{bvals.size} b-values for {n_volumes} DWI volumes")
    if not np.all(np.isfinite(bvals)) or np.any(bvals < 0):
        raise InputError(bval_path, "b-values must be finite and non-negative")

    bvecs = _read_numbers(bvec_path)
    if bvecs.ndim == 1 and n_volumes == 1:
        bvecs = bvecs.reshape(3, 1) if bvecs.size == 3 else bvecs
    if bvecs.ndim != 2 or bvecs.shape[0] != 3:
        raise InputError(bvec_path, f"expected 3 rows (x, y, z), found shape {bvecs.shape}")
    if bvecs.shape[1] != n_volumes:
        raise InputError(bvec_path, f"{bvecs.shape[1]} gradient directions for {n_volumes} DWI "
                                    f"volumes ({bval_path} has {bvals.size} b-values)")
    if not np.all(np.isfinite(bvecs)):
        raise InputError(bvec_path, "gradient directions must be finite")
    return bvals, bvecs


def _read_numbers(path: PathLike) -> np.ndarray:
    try:
        text = Path(path).read_text()
    except FileNotFoundError as err:
        raise InputError(path, "file not found") from err
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"unreadable ({err})") from err
    rows = [line.split() for line in text.splitlines() if line.strip()]
    if not rows:
        raise InputError(path, "empty gradient file")
    if len({len(row) for row in rows}) != 1:
        raise InputError(path, "rows of different lengths")
    try:
        values = np.array(rows, dtype=np.float64)
    except ValueError as err:
        raise InputError(path, f"non-numeric value ({err})") from err
    return values[0] if values.shape[0] == 1 else values


# ----------------------------------------------------------------------------- shells


def group_shells(bvals: np.ndarray, tolerance: float = 50.0) -> list[np.ndarray]:
    """Group volume indices into shells of similar b-value.

    Sorted b-values start a new shell where the gap to the previous one exceeds ``tolerance``.

    Args:
        bvals: b-value of each volume (s/mm2).
        tolerance: largest gap (s/mm2) between neighbouring b-values of one shell.

    Returns:
        One array of volume indices per shell, shells in increasing b.
    """
    bvals = np.asarray(bvals, dtype=np.float64)
    order = np.argsort(bvals, kind="stable")
    breaks = np.flatnonzero(np.diff(bvals[order]) > tolerance) + 1
    return [np.sort(idx) for idx in np.split(order, breaks)]


DEFAULT_REQUIRED_B: tuple[float, ...] = (0.0,)
"""The shells a DWI must have when the preferred ones are not all there (``ingest.
required_b_values``): b = 0, plus at least one other shell."""


class ShellError(ValueError):
    """A DWI lacks a shell the rule requires (:func:`choose_shells`).

    Attributes:
        missing: the required b-value not found (None: only one shell at all).
        present: the rounded b-value of every shell present.
        required: what was required.
    """

    def __init__(self, missing: float | None, present: list[int], required: Sequence[float]):
        self.missing, self.present, self.required = missing, present, list(required)
        what = f"no b={missing:g} s/mm2 shell" if missing is not None else "only one shell"
        super().__init__(f"{what} (shells present: {present}; required: {self.required})")


@dataclass(frozen=True)
class ShellChoice:
    """The shells an ADC fit uses: volume indices per shell, their mean b-values, and whether
    they are the preferred set."""

    shells: list[np.ndarray]
    b_values: tuple[float, ...]
    preferred: bool


def choose_shells(
    bvals: np.ndarray,
    preferred_b: Sequence[float] = (0, 500, 1000),
    tolerance: float = 50.0,
    required_b: Sequence[float] = DEFAULT_REQUIRED_B,
) -> ShellChoice:
    """The one rule, for the workflow (validation, fit) and ``cesynth predict``, of which shells
    a DWI's ADC is fitted from.

    When every preferred shell is present, exactly those are fitted (the paper's 0/500/1000 by
    default; other shells are ignored). Otherwise the DWI must have the ``required_b`` shells
    and at least two shells, and every shell present is fitted (two-point for 0/1000). With
    ``required_b`` equal to ``preferred_b`` the preferred shells are all required.

    Args:
        bvals: b-value of each volume (s/mm2).
        preferred_b: the preferred shells (``ingest.b_values``).
        tolerance: s/mm2 within which a volume belongs to a shell and a shell matches a b-value.
        required_b: shells that must be present when the preferred are not all there.

    Returns:
        The :class:`ShellChoice`.

    Raises:
        ShellError: a required (or, with all required, a preferred) shell is missing, or the
            DWI has one shell only.
    """
    shells = group_shells(bvals, tolerance)
    centres = np.array([np.mean(np.asarray(bvals, dtype=float)[idx]) for idx in shells])
    present = sorted({round(float(c)) for c in centres})

    def match(b: float) -> int | None:
        k = int(np.argmin(np.abs(centres - b)))
        return k if abs(centres[k] - b) <= tolerance else None

    preferred = [match(b) for b in sorted(preferred_b)]
    if all(k is not None for k in preferred) and len(set(preferred)) == len(preferred):
        chosen = [shells[k] for k in preferred if k is not None]
        return ShellChoice(chosen, tuple(float(centres[k]) for k in preferred if k is not None),
                           True)
    for b in sorted(required_b):
        if match(b) is None:
            raise ShellError(b, present, required_b)
    if len(shells) < 2:
        raise ShellError(None, present, required_b)
    return ShellChoice(list(shells), tuple(float(c) for c in centres), False)


def shell_means(
    dwi: np.ndarray, bvals: np.ndarray, tolerance: float = 50.0
) -> tuple[np.ndarray, np.ndarray]:
    """Geometric mean over the volumes of each shell (the trace-weighted image).

    A shell's mean is 0 in a voxel where any of its samples is zero, negative or not finite
    (the geometric mean is then 0 or undefined); :func:`fit_adc` clamps and counts those.

    Args:
        dwi: DWI data, shape ``(X, Y, Z, N)``.
        bvals: b-value of each of the ``N`` volumes (s/mm2).
        tolerance: b-value tolerance for grouping shells (s/mm2).

    Returns:
        ``(shell_b, shell_signal)``: mean b-value of each shell, shape ``(K,)``, increasing; and
        the float32 geometric means, shape ``(X, Y, Z, K)``.
    """
    dwi = _check_dwi(dwi, bvals)
    shells = group_shells(bvals, tolerance)
    shell_b = np.array([np.mean(bvals[idx]) for idx in shells])
    out = np.empty_like(dwi, shape=dwi.shape[:3] + (len(shells),), dtype=np.float32)
    for k, idx in enumerate(shells):
        log_mean, bad = _mean_log(dwi, idx)
        np.exp(log_mean, out=out[..., k])
        out[..., k][bad] = 0.0  # not the floor: fit_adc must see and count these samples
    return shell_b, out


def _check_dwi(dwi: np.ndarray, bvals: np.ndarray) -> np.ndarray:
    dwi = np.asarray(dwi)
    if dwi.ndim != 4:
        raise ValueError(f"DWI must be 4-D (X, Y, Z, N), got shape {dwi.shape}")
    if dwi.shape[3] != len(bvals):
        raise ValueError(f"{dwi.shape[3]} DWI volumes but {len(bvals)} b-values")
    return dwi


def _log_into(signal: np.ndarray, out: np.ndarray) -> None:
    """``out = ln(signal)`` in float32; invalid samples give -inf or NaN, caught by the caller."""
    with np.errstate(divide="ignore", invalid="ignore"):
        np.log(signal, out=out, dtype=np.float32)


def _replace_invalid(log_values: np.ndarray) -> np.ndarray:
    """Set non-finite logs to ``ln(SIGNAL_FLOOR)`` in place; return where they were."""
    bad = ~np.isfinite(log_values)
    np.copyto(log_values, np.log(np.float32(SIGNAL_FLOOR)), where=bad)
    return bad


def _mean_log(dwi: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the logs over volumes ``idx`` (log of the geometric mean), and its bad voxels.

    A zero, negative or non-finite sample makes the sum -inf, NaN or inf, so one finiteness
    test on the sum finds them all; those voxels get the floor (geometric mean 0, clamped).
    """
    # same memory order as the volumes (NIfTI data are Fortran-ordered): mixed orders are slow
    total = np.empty_like(dwi[..., idx[0]], dtype=np.float32)
    work = np.empty_like(total)
    _log_into(dwi[..., idx[0]], total)
    for i in idx[1:]:
        _log_into(dwi[..., i], work)
        total += work
    if len(idx) > 1:
        total /= np.float32(len(idx))
    return total, _replace_invalid(total)


# ----------------------------------------------------------------------------- fit


def fit_adc(
    shell_b: np.ndarray,
    shell_signal: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    min_adc: float = 0.0,
    max_adc: float = 4e-3,
    s0_threshold: float | None = None,
    weights: Sequence[float] | None = None,
) -> tuple[np.ndarray, AdcStats]:
    """Log-linear least-squares ADC fit over the shells, in closed form.

    Args:
        shell_b: b-value of each shell (s/mm2), shape ``(K,)``, at least two distinct values.
        shell_signal: per-shell signal, shape ``(X, Y, Z, K)`` (e.g. from :func:`shell_means`).
        mask: optional boolean ``(X, Y, Z)``; voxels outside get ADC 0.
        min_adc: lower physiological limit (mm2/s); smaller fitted values are clipped to it.
        max_adc: upper physiological limit (mm2/s); larger fitted values are clipped to it.
        s0_threshold: voxels whose lowest-b signal is at or below this get ADC 0. ``None``:
            automatic, ``AUTO_THRESHOLD_FRACTION`` times the 99th percentile of the positive
            lowest-b signal inside the mask (whole volume without a mask).
        weights: optional per-shell least-squares weights (e.g. volumes per shell, which
            reproduces an all-volume fit such as MRtrix3's ``dwi2adc``); default equal.

    Returns:
        ``(adc, stats)``: float32 ADC map (mm2/s), shape ``(X, Y, Z)``, and :class:`AdcStats`.
    """
    shell_b = np.asarray(shell_b, dtype=np.float64)
    shell_signal = np.asarray(shell_signal)
    if shell_signal.ndim != 4 or shell_signal.shape[3] != shell_b.size:
        raise ValueError(f"shell_signal shape {shell_signal.shape} does not match "
                         f"{shell_b.size} shells")
    log_signal, bad = [], np.zeros_like(shell_signal[..., 0], dtype=bool)
    for k in range(shell_b.size):
        log_k = np.empty_like(shell_signal[..., k], dtype=np.float32)
        _log_into(shell_signal[..., k], log_k)
        bad |= _replace_invalid(log_k)
        log_signal.append(log_k)
    return _fit_log_signal(shell_b, log_signal, bad, mask, min_adc=min_adc, max_adc=max_adc,
                           s0_threshold=s0_threshold, weights=weights)


def _fit_log_signal(
    shell_b: np.ndarray,
    log_signal: list[np.ndarray],
    bad: np.ndarray,
    mask: np.ndarray | None,
    *,
    min_adc: float,
    max_adc: float,
    s0_threshold: float | None,
    weights: Sequence[float] | None,
) -> tuple[np.ndarray, AdcStats]:
    """The fit on per-shell log signals (one 3-D float32 array per shell)."""
    if min_adc > max_adc:
        raise ValueError(f"min_adc {min_adc} exceeds max_adc {max_adc}")
    slope_coef = _slope_coefficients(shell_b, weights)
    adc = np.zeros_like(log_signal[0])
    term = np.empty_like(adc)
    for coef, log_k in zip(slope_coef, log_signal, strict=True):
        # ADC = -slope = -sum_k c_k ln S_k, accumulated in place
        np.multiply(log_k, np.float32(coef), out=term)
        adc -= term
    del term
    fitted = _fitted_voxels(log_signal[int(np.argmin(shell_b))], mask, s0_threshold)
    outside = ~fitted

    # park unfitted voxels inside the limits so full-volume counts and clips ignore them
    np.copyto(adc, np.float32(min_adc), where=outside)
    n_low = int(np.count_nonzero(adc < np.float32(min_adc)))
    n_high = int(np.count_nonzero(adc > np.float32(max_adc)))
    np.clip(adc, np.float32(min_adc), np.float32(max_adc), out=adc)
    np.copyto(adc, np.float32(0.0), where=outside)
    values = _masked_values(adc, fitted)
    stats = AdcStats(
        n_voxels_fitted=int(values.size),
        n_clipped_low=n_low,
        n_clipped_high=n_high,
        n_nonpositive_signal=int(np.count_nonzero(bad & fitted)),
        median_in_mask=float(np.median(values, overwrite_input=True)) if values.size else 0.0,
        b_values=tuple(float(b) for b in shell_b),
    )
    return adc, stats


def _masked_values(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``values[mask]`` (in memory order), without numpy's copy of Fortran-ordered arrays."""
    order = "F" if values.flags.f_contiguous and not values.flags.c_contiguous else "C"
    return values.ravel(order=order)[mask.ravel(order=order)]


def _slope_coefficients(shell_b: np.ndarray, weights: Sequence[float] | None) -> np.ndarray:
    """``c`` with ``slope = sum_k c_k y_k`` for weighted least squares of ``y`` on ``b``."""
    w = np.ones_like(shell_b) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != shell_b.shape or np.any(w <= 0):
        raise ValueError(f"need one positive weight per shell, got {w!r}")
    b_mean = np.sum(w * shell_b) / np.sum(w)
    centred = shell_b - b_mean
    s_bb = np.sum(w * centred**2)
    if s_bb <= 0:
        raise ValueError(f"need at least two distinct b-values, got {shell_b.tolist()}")
    return w * centred / s_bb


def _fitted_voxels(
    log_s0: np.ndarray, mask: np.ndarray | None, s0_threshold: float | None
) -> np.ndarray:
    """Voxels to fit: inside the mask and with the lowest-b signal above the noise threshold."""
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != log_s0.shape:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {log_s0.shape}")
    if s0_threshold is None:
        s0_threshold = auto_noise_threshold(log_s0, mask)
    # compare in the log domain: no exp over the volume
    log_threshold = np.log(max(s0_threshold, SIGNAL_FLOOR))
    fitted = log_s0 > np.float32(log_threshold)
    if mask is not None:
        fitted &= mask
    return fitted


def auto_noise_threshold(log_s0: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Automatic S0 noise threshold: a fraction of the 99th percentile of the positive S0.

    Args:
        log_s0: natural log of the b=0 signal (clamped), shape ``(X, Y, Z)``.
        mask: optional boolean mask restricting the voxels considered.

    Returns:
        ``AUTO_THRESHOLD_FRACTION * P99(S0)`` over the voxels whose S0 exceeds the signal floor
        (a regular subsample of at most about a million of them, for speed); 0 if there are none.
    """
    values = _masked_values(log_s0, mask) if mask is not None else log_s0.ravel(order="K")
    step = max(1, values.size // _PERCENTILE_SAMPLE)
    sample = values[::step]
    sample = sample[sample > np.float32(np.log(SIGNAL_FLOOR))]
    if sample.size == 0:
        return 0.0
    return float(AUTO_THRESHOLD_FRACTION * np.exp(np.percentile(sample, 99)))


# ----------------------------------------------------------------------------- files


def fit_adc_file(
    dwi_path: PathLike,
    bval_path: PathLike,
    bvec_path: PathLike,
    out_path: PathLike,
    mask_path: PathLike | None = None,
    required_b: Sequence[float] = (0, 500, 1000),
    b_tolerance: float = 50.0,
    *,
    min_adc: float = 0.0,
    max_adc: float = 4e-3,
    weighting: str = "shell",
    accept_b: Sequence[float] = DEFAULT_REQUIRED_B,
) -> AdcStats:
    """Fit the ADC map of a DWI file and write it (float32, mm2/s, DWI grid) atomically.

    The shells are chosen by :func:`choose_shells`: those matching ``required_b`` (the
    preferred set) when all are present, other shells ignored; else, when the DWI has the
    ``accept_b`` shells and another, every shell present, with a warning (the method was
    described with the preferred set) and ``preferred_shells`` False in the stats.
    Without a mask, voxels whose b=0 signal exceeds the automatic noise threshold
    (:func:`auto_noise_threshold`) are fitted; with one, that threshold is taken inside it.

    Args:
        dwi_path: 4-D DWI NIfTI.
        bval_path: FSL ``.bval`` file.
        bvec_path: FSL ``.bvec`` file.
        out_path: output ADC NIfTI (3-D, same shape and affine as the DWI's first 3 axes;
            header ``intent_name`` "ADC mm2/s").
        mask_path: optional brain mask on the DWI grid (non-zero = inside).
        required_b: the preferred b-values (s/mm2); the fit uses these when all are present.
        b_tolerance: b-value tolerance for grouping and matching shells (s/mm2).
        min_adc: lower ADC limit (mm2/s), values below are clipped and counted.
        max_adc: upper ADC limit (mm2/s), values above are clipped and counted.
        weighting: ``"shell"`` (each shell one point, the method's definition) or ``"volume"``
            (shells weighted by their volume count: the all-volume fit of MRtrix3 ``dwi2adc``).
        accept_b: shells that must be present when ``required_b`` are not all there
            (``ingest.required_b_values``; default b = 0); equal to ``required_b``: all
            required.

    Returns:
        The fit's :class:`AdcStats`.

    Raises:
        InputError: the output is an input, a folder, not writable or not ``.nii``/``.nii.gz``
            (checked first); a file is unreadable, the DWI is not 4-D or has a voxel size that
            is not positive, the gradient files do not match it, a required shell is missing
            (names the ``.bval`` file) or the mask is on another grid; the DWI has NaN or
            inf voxels, no positive b=0 signal (in the mask), or the fit clips more than
            :data:`MAX_CLIPPED_FRACTION` of its voxels; the mask is empty. Nothing is written
            then.
    """
    if weighting not in ("shell", "volume"):
        raise ValueError(f"weighting must be 'shell' or 'volume', not {weighting!r}")
    inputs = [path for path in (dwi_path, bval_path, bvec_path, mask_path) if path is not None]
    check_outputs([out_path], inputs)
    check_output_file(out_path, (".nii", ".nii.gz"))
    img = load_nifti(dwi_path)
    check_voxel_sizes(img, dwi_path)
    if len(img.shape) != 4 or img.shape[3] < 2:
        raise InputError(dwi_path, f"expected a 4-D DWI with several volumes, shape {img.shape}")
    dwi = img.get_fdata(dtype=np.float32)
    check_finite(dwi, dwi_path)
    bvals, _ = read_bvals_bvecs(bval_path, bvec_path, img.shape[3])
    choice = _select_shells(bvals, required_b, b_tolerance, bval_path, accept_b)
    shells = choice.shells
    mask = _load_mask(mask_path, img) if mask_path is not None else None
    _check_b0_signal(dwi, shells[0], mask, dwi_path)
    adc, stats = fit_dwi_shells(dwi, bvals, shells, mask, min_adc=min_adc, max_adc=max_adc,
                                weighting=weighting)
    _check_clipping(stats, min_adc, max_adc, dwi_path)
    if not choice.preferred:
        stats = replace(stats, preferred_shells=False)
        logging.getLogger(__name__).warning(
            "%s: ADC fitted from b = %s s/mm2 (the shells present); the method was described "
            "with b = %s (ingest.b_values)", dwi_path, shell_text(stats.b_values),
            shell_text(required_b))
    header = nib.Nifti1Header()
    header["intent_name"] = b"ADC mm2/s"  # save_nifti owns descrip; units go here
    save_nifti(adc, img.affine, out_path, dtype=np.float32, header=header)
    return stats


def fit_dwi_shells(
    dwi: np.ndarray,
    bvals: np.ndarray,
    shells: Sequence[np.ndarray],
    mask: np.ndarray | None = None,
    *,
    min_adc: float = 0.0,
    max_adc: float = 4e-3,
    weighting: str = "shell",
) -> tuple[np.ndarray, AdcStats]:
    """The core of :func:`fit_adc_file` on arrays: per-shell mean logs, then the fit.

    Equivalent to ``fit_adc(*shell_means(...))`` restricted to ``shells``, without the
    exp/log round trip.

    Args:
        dwi: DWI data, shape ``(X, Y, Z, N)``.
        bvals: b-value of each volume (s/mm2).
        shells: volume indices of each shell to fit (e.g. from :func:`group_shells`).
        mask: optional boolean ``(X, Y, Z)`` mask.
        min_adc: lower ADC limit (mm2/s).
        max_adc: upper ADC limit (mm2/s).
        weighting: ``"shell"`` (equal) or ``"volume"`` (by volume count, as ``dwi2adc``).

    Returns:
        ``(adc, stats)`` as :func:`fit_adc`.
    """
    if weighting not in ("shell", "volume"):
        raise ValueError(f"weighting must be 'shell' or 'volume', not {weighting!r}")
    dwi = _check_dwi(dwi, bvals)
    shell_b = np.array([np.mean(bvals[idx]) for idx in shells])
    log_signal, bad = [], np.zeros_like(dwi[..., 0], dtype=bool)
    for idx in shells:
        log_k, bad_k = _mean_log(dwi, idx)
        log_signal.append(log_k)
        bad |= bad_k
    weights = [len(idx) for idx in shells] if weighting == "volume" else None
    return _fit_log_signal(shell_b, log_signal, bad, mask, min_adc=min_adc, max_adc=max_adc,
                           s0_threshold=None, weights=weights)


def _select_shells(
    bvals: np.ndarray, required_b: Sequence[float], tolerance: float, bval_path: PathLike,
    accept_b: Sequence[float] = DEFAULT_REQUIRED_B,
) -> ShellChoice:
    """:func:`choose_shells`, an InputError naming the file when a shell is missing."""
    try:
        return choose_shells(bvals, required_b, tolerance, accept_b)
    except ShellError as err:
        raise InputError(bval_path, str(err)) from err


def shell_text(b_values: Sequence[float]) -> str:
    """The shells as the tables write them: rounded b-values in increasing order, ``0/500/1000``."""
    return "/".join(f"{b:g}" for b in sorted(round(float(b)) for b in b_values))


def _check_b0_signal(dwi: np.ndarray, b0_volumes: np.ndarray, mask: np.ndarray | None,
                     dwi_path: PathLike) -> None:
    """Refuse a DWI whose b=0 signal is nowhere positive (in the mask): every voxel would be
    left unfitted and the map all zero."""
    b0 = dwi[..., b0_volumes].mean(axis=-1)
    region = b0 if mask is None else b0[mask]
    if not np.any(region > 0):
        where = "every voxel" if mask is None else "every voxel of the mask"
        raise InputError(dwi_path, f"b=0 signal is zero or negative in {where}; nothing to fit")


def _check_clipping(stats: AdcStats, min_adc: float, max_adc: float,
                    dwi_path: PathLike) -> None:
    """Refuse a fit with no voxel, or with most voxels clipped (wrong b-values, volume order or
    scaling: the map would be the clip limits); warn when many are."""
    if stats.n_voxels_fitted == 0:
        raise InputError(dwi_path, "no voxel above the noise threshold; nothing fitted")
    clipped = stats.n_clipped_low + stats.n_clipped_high
    share = clipped / stats.n_voxels_fitted
    text = (f"{100 * share:.0f}% of the fitted voxels clipped to [{min_adc:g}, {max_adc:g}] "
            f"mm2/s ({stats.n_clipped_low} below, {stats.n_clipped_high} above)")
    if share > MAX_CLIPPED_FRACTION:
        raise InputError(dwi_path, f"{text}: check the b-values, the volume order and the "
                                   "signal scaling")
    if share > WARN_CLIPPED_FRACTION:
        logging.getLogger(__name__).warning("%s: %s", dwi_path, text)


def _load_mask(mask_path: PathLike, dwi_img) -> np.ndarray:
    mask_img = load_nifti(mask_path)
    if any(n != 1 for n in mask_img.shape[3:]):
        raise InputError(mask_path, f"mask shape {mask_img.shape} is not the DWI grid "
                                    f"{dwi_img.shape[:3]}")
    check_same_grid(mask_img, dwi_img, mask_path, "the DWI")
    data = np.asanyarray(mask_img.dataobj).reshape(dwi_img.shape[:3])
    if not np.any(data != 0):
        raise InputError(mask_path, "empty mask (no nonzero voxel)")
    return data != 0


__all__ = ["AUTO_THRESHOLD_FRACTION", "DEFAULT_REQUIRED_B", "SIGNAL_FLOOR", "AdcStats",
           "ShellChoice", "ShellError", "auto_noise_threshold", "choose_shells", "fit_adc",
           "fit_adc_file", "fit_dwi_shells", "group_shells", "read_bvals_bvecs", "shell_means",
           "shell_text"]
