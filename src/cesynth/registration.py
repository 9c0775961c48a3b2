"""Rigid-then-affine registration of T1w, T2w, FLAIR and DWI (b0, carrying the ADC) to the CE-T1.

All registrations use ANTs (antspyx) with Mattes mutual information, an initial translation that
aligns the centres of mass, a fixed random seed and a thread count from the caller. The forward
transform maps points in the FIXED (CE-T1) physical space to the MOVING physical space, the
direction resampling needs. ANTs works in LPS physical coordinates; NIfTI affines here are RAS, so
every conversion goes through ``_LPS = diag(-1, -1, 1)``.

Images enter ANTs through their nibabel affines (not ITK's own NIfTI reader), so the grid written
by :func:`cesynth.io.save_nifti` is exactly the CE-T1 grid nibabel reads back.

Reading ANTs transforms, converting them to and from RAS matrices and the displacement against a
known transform are :mod:`cesynth.ants_transforms`. This module stays a little over 500 lines
because it is one concern: every way an image is brought to the CE-T1 (rigid-then-affine, the
DWI's b0, the ADC map, the checked identity) and its QC row share the ANTs settings, the image
conversion and the all-or-nothing writing of image and transform below.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ants
import nibabel as nib
import numpy as np

from cesynth.ants_transforms import displacement_error_mm, read_ants_transform
from cesynth.io import (
    InputError,
    atomic_path,
    check_output_file,
    check_outputs,
    load_checked_nifti,
    load_nifti,
    save_nifti,
)

PathLike = str | os.PathLike

_LPS = np.diag([-1.0, -1.0, 1.0])
_log = logging.getLogger(__name__)

# Two ANTs stages, each on a coarse-to-fine pyramid: rigid first (robust start for thick slices),
# then the full affine (12 parameters) that absorbs residual scaling/shear of the acquisition.
_STAGES: tuple[str, ...] = ("Rigid", "Affine")
_METRIC = "mattes"
_HISTOGRAM_BINS = 32
_SAMPLING_RATE = 0.1
_ITERATIONS = (300, 100, 20)
_SHRINK_FACTORS = (4, 2, 1)
_SMOOTHING_SIGMAS = (2, 1, 0)
# The pyramid's finest level is never finer than this: on a 1 mm CE-T1 the 1 mm level was 78 % of
# each stage's time (20 iterations on 17.6 M voxels) and changed MI only in the fifth decimal;
# ending at 2 mm: 4-5x faster, 0.08-0.10 mm from the phantom's true transform (RESULTS.md).
_FINEST_LEVEL_MM = 2.0

# Registration is rejected when MI drops by more than this fraction of |MI before|.
_MI_DROP_TOLERANCE = 0.05
# Two scans of one head barely differ in scale; a fit scaling more than this has diverged.
_MAX_SCALE_DEVIATION = 0.25

# ITK fixes its thread count at its first use in a process (see _ants_settings).
_threads_in_effect: int | None = None


@dataclass(frozen=True)
class RegistrationResult:
    """Outcome of one registration.

    Attributes:
        mi_before: mutual information (nats-like, larger is better) with the moving image put on the
            fixed grid by the identity mapping; measured on the registration's finest level
            (the fixed grid, or the fixed image resampled to 2 mm when its voxels are finer).
        mi_after: the same after registration.
        transform_path: the ANTs ``.mat`` (fixed physical space -> moving physical space).
        output_path: the moving image (or the ADC) resampled onto the fixed grid.
        seconds: wall-clock time of the whole call.
    """

    mi_before: float
    mi_after: float
    transform_path: Path
    output_path: Path
    seconds: float


def method_record() -> dict[str, Any]:
    """The registration method as this cesynth runs it, for a model's preprocessing record.

    Returns:
        ``stages``, ``metric``, ``histogram_bins``, ``sampling_rate``, ``iterations``,
        ``shrink_factors``, ``smoothing_sigmas`` (voxels; scaled by :func:`pyramid` on images
        finer than ``finest_level_mm``), ``finest_level_mm``, ``initialisation``,
        ``interpolation`` and ``dwi_moving`` (the DWI volume that is registered); the seed is
        the caller's.
    """
    return {
        "stages": [stage.lower() for stage in _STAGES],
        "metric": _METRIC,
        "histogram_bins": _HISTOGRAM_BINS,
        "sampling_rate": _SAMPLING_RATE,
        "iterations": list(_ITERATIONS),
        "shrink_factors": list(_SHRINK_FACTORS),
        "smoothing_sigmas": list(_SMOOTHING_SIGMAS),
        "finest_level_mm": _FINEST_LEVEL_MM,
        "initialisation": "centres of mass",
        "interpolation": "linear",
        "dwi_moving": "mean b=0 volume",
    }


def register_to_reference(
    fixed_path: PathLike,
    moving_path: PathLike,
    out_path: PathLike,
    xfm_path: PathLike,
    *,
    threads: int = 1,
    seed: int = 0,
    moving_volume: int | Sequence[int] | None = None,
) -> RegistrationResult:
    """Register a moving image to the fixed (CE-T1) image and resample it onto the fixed grid.

    Args:
        fixed_path: the reference NIfTI (native CE-T1).
        moving_path: the NIfTI to align (3D, or 4D with ``moving_volume``).
        out_path: where the moving image resampled (linear) onto the fixed grid is written, float32.
        xfm_path: where the ANTs ``.mat`` transform is written.
        threads: ITK threads for the registration.
        seed: random seed for the metric sampling (>= 0); with ``threads=1`` the same seed
            gives the same transform on every run (several threads sum in varying order).
        moving_volume: for a 4D moving image, the volume index, or indices to average.

    Returns:
        The :class:`RegistrationResult`.

    Raises:
        InputError: an output that is an input, a folder, not writable or of the wrong suffix
            (checked first; :func:`check_registration_outputs`); unreadable or unusable input
            (a voxel size that is not positive, a voxel that is not finite, no contrast), or a
            failed registration (names the moving file).
    """
    return _register_and_resample(fixed_path, moving_path, moving_volume, None, out_path,
                                  xfm_path, threads=threads, seed=seed)


def register_dwi_to_reference(
    fixed_path: PathLike,
    dwi_path: PathLike,
    bval_path: PathLike,
    adc_path: PathLike,
    out_adc_path: PathLike,
    xfm_path: PathLike,
    *,
    threads: int = 1,
    seed: int = 0,
    b0_threshold: float = 50.0,
) -> RegistrationResult:
    """Register the mean b=0 volume of a DWI to the CE-T1 and carry the ADC map with it.

    Args:
        fixed_path: the reference NIfTI (native CE-T1).
        dwi_path: the 4D DWI NIfTI.
        bval_path: its FSL ``.bval`` file.
        adc_path: the ADC map on the DWI grid.
        out_adc_path: where the ADC resampled (linear) onto the CE-T1 grid is written, float32.
        xfm_path: where the ANTs ``.mat`` transform (CE-T1 -> DWI physical space) is written.
        threads: ITK threads for the registration.
        seed: random seed for the metric sampling.
        b0_threshold: volumes with b at or below this (s/mm2) count as b=0.

    Returns:
        The :class:`RegistrationResult`; its MI values are for the b0 against the CE-T1.

    Raises:
        InputError: unreadable input, no b=0 volume, mismatched bvals, or a failed registration.
    """
    b0_index = b0_volumes(dwi_path, bval_path, b0_threshold)
    return _register_and_resample(fixed_path, dwi_path, b0_index, adc_path, out_adc_path,
                                  xfm_path, threads=threads, seed=seed)


ADC_MAP_STAGES: tuple[str, ...] = ("Rigid",)
ADC_MAP_CAP = 2.0
"""A given ADC map (no b0 to register) is registered on a copy capped at this many times its
median: CSF (about 3e-3 mm2/s) would otherwise crush the tissue contrast into a few histogram
bins. Rigid only: the map's contrast against a T1 is too weak for the affine stage's six more
degrees of freedom (on the phantom the affine drifted by 20 mm, rigid on the capped copy was
within 1.1 mm of the truth, as the DWI's b0 route)."""

ADC_MAP_METHOD = "ANTs rigid of the ADC map (capped at 2x its median)"
"""The registration QC's ``method`` for a given ADC map."""


def register_adc_map_to_reference(
    fixed_path: PathLike,
    adc_path: PathLike,
    out_path: PathLike,
    xfm_path: PathLike,
    *,
    threads: int = 1,
    seed: int = 0,
) -> RegistrationResult:
    """Register a given ADC (or MD) map itself to the CE-T1 (or the T1): rigid, on a copy
    capped at :data:`ADC_MAP_CAP` times its median, then the map itself resampled linearly.

    The workflow (scans with a given map and no DWI) and ``cesynth predict --adc`` both use it.

    Args:
        fixed_path: the reference NIfTI.
        adc_path: the ADC map in mm2/s (:func:`cesynth.adc.convert_adc_map_file`), 3D.
        out_path: the map on the fixed grid, float32.
        xfm_path: the ANTs ``.mat`` (fixed physical space -> the map's).
        threads: ITK threads.
        seed: random seed for the metric sampling.

    Returns:
        The :class:`RegistrationResult` (MI of the capped copy against the fixed image).
    """
    return _register_and_resample(fixed_path, adc_path, None, adc_path, out_path, xfm_path,
                                  threads=threads, seed=seed, stages=ADC_MAP_STAGES,
                                  cap_median=ADC_MAP_CAP)


def _register_and_resample(
    fixed_path: PathLike,
    moving_path: PathLike,
    moving_volume: int | Sequence[int] | None,
    carried_path: PathLike | None,
    out_path: PathLike,
    xfm_path: PathLike,
    *,
    threads: int,
    seed: int,
    stages: Sequence[str] = _STAGES,
    cap_median: float | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed``, then resample ``carried`` (default: moving) onto it;
    ``cap_median``: the moving image is capped at that many times its positive median first."""
    start = time.perf_counter()
    check_registration_outputs(out_path, xfm_path, fixed_path, moving_path, carried_path)
    fixed_nii = load_checked_nifti(fixed_path)
    moving_nii = load_checked_nifti(moving_path)
    carried_nii = load_checked_nifti(carried_path) if carried_path is not None else None
    # Every ANTs object is made inside the settings block: ITK fixes its threads at first use.
    with _ants_settings(threads, seed), tempfile.TemporaryDirectory(prefix="cesynth-reg-") as work:
        fixed = _nifti_to_ants(_volume(fixed_nii, fixed_path, None), fixed_nii.affine)
        moving_data = _volume(moving_nii, moving_path, moving_volume)
        if cap_median is not None and np.any(moving_data > 0):
            cap = cap_median * float(np.median(moving_data[moving_data > 0]))
            moving_data = np.minimum(moving_data, np.float32(cap))
        moving = _nifti_to_ants(moving_data, moving_nii.affine)
        _check_contrast(fixed, fixed_path)
        _check_contrast(moving, moving_path)
        carried = None  # what is resampled when it is not the moving image: the ADC
        if carried_nii is not None:
            carried = _nifti_to_ants(_volume(carried_nii, carried_path, None), carried_nii.affine)
        mi_before, mi_after, xfm_tmp, warped = _register(fixed, moving, moving_path,
                                                         Path(work), stages)
        if carried is not None:
            warped = _apply(fixed, carried, xfm_tmp, "linear")
        elif warped is None:
            warped = _apply(fixed, moving, xfm_tmp, "linear")
        _write_outputs(warped, fixed_nii.affine, out_path, xfm_tmp, xfm_path)
    return RegistrationResult(mi_before, mi_after, Path(xfm_path), Path(out_path),
                              time.perf_counter() - start)


def check_registration_outputs(out_path: PathLike, xfm_path: PathLike,
                               *inputs: PathLike | None) -> None:
    """Fail before any work unless the registered image (``.nii``/``.nii.gz``) and the
    transform (``.mat``) are two writable files, neither of them an input.

    Raises:
        InputError: on the output path.
    """
    check_outputs((out_path, xfm_path), [path for path in inputs if path is not None])
    check_output_file(out_path, (".nii", ".nii.gz"))
    check_output_file(xfm_path, (".mat",))


IDENTITY_METHOD = "identity (declared co-registered)"
"""The registration QC's ``method`` for images declared co-registered (``ingest.coregistered``)."""


def identity_to_reference(
    fixed_path: PathLike,
    moving_path: PathLike,
    out_path: PathLike,
    xfm_path: PathLike,
    *,
    who: str | None = None,
    reference: str = "the CE-T1",
    hint: str = "ingest.coregistered declares every input on it; register it or set it to false",
) -> RegistrationResult:
    """The registration of an image declared co-registered: checked to be on the fixed grid,
    copied there (float32) with an identity ANTs transform, so every consumer of the registered
    image and of the ``.mat`` works as after a real registration.

    Args:
        fixed_path: the reference NIfTI (native CE-T1).
        moving_path: the image declared on its grid (3D).
        out_path: where the image goes, on the fixed grid's affine, float32.
        xfm_path: where the identity ANTs ``.mat`` goes.
        who: names the subject in the error (``sub-01``), which then reads
            ``who: <file>: not on the CE-T1 grid: ...``.
        reference: how the error names the fixed image.
        hint: what the error says to do.

    Returns:
        The :class:`RegistrationResult`, MI before and after both the MI on the given grid.

    Raises:
        InputError: the image is not on the fixed grid (same shape and affine within
            :data:`cesynth.io.GRID_ATOL_MM`), or is not 3D.
    """
    from cesynth.io import check_same_grid

    start = time.perf_counter()
    check_registration_outputs(out_path, xfm_path, fixed_path, moving_path)
    fixed_nii, moving_nii = load_nifti(fixed_path), load_nifti(moving_path)
    name = Path(moving_path).name
    try:
        check_same_grid(moving_nii, fixed_nii, name, reference, hint=hint)
        data = _volume(moving_nii, name, None)
    except InputError as err:
        if who is None:
            raise
        raise InputError(who, f"{name}: {err.problem}") from err
    with _ants_settings(1, 0):
        fixed = _nifti_to_ants(_volume(fixed_nii, fixed_path, None), fixed_nii.affine)
        moving = _nifti_to_ants(data, fixed_nii.affine)
        mi = _mutual_information(fixed, moving)
        identity = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
        with atomic_path(xfm_path) as xfm_stage, atomic_path(out_path) as image_stage:
            ants.write_transform(identity, str(xfm_stage))
            save_nifti(data, fixed_nii.affine, image_stage, dtype=np.float32)
    return RegistrationResult(mi, mi, Path(xfm_path), Path(out_path),
                              time.perf_counter() - start)


def apply_registration(
    fixed_path: PathLike,
    moving_path: PathLike,
    xfm_path: PathLike,
    out_path: PathLike,
    *,
    interpolation: str = "linear",
) -> Path:
    """Resample a moving image onto the fixed grid with a saved transform.

    Args:
        fixed_path: NIfTI whose grid (shape and affine) the output takes.
        moving_path: the 3D NIfTI to resample.
        xfm_path: the ANTs ``.mat`` (fixed physical space -> moving physical space).
        out_path: output NIfTI, float32 (uint8 for ``nearestNeighbor``, as masks are).
        interpolation: an ANTs interpolator, ``"linear"`` or ``"nearestNeighbor"`` for masks.

    Returns:
        The output path.
    """
    fixed_nii = load_nifti(fixed_path)
    moving_nii = load_nifti(moving_path)
    fixed = _nifti_to_ants(_volume(fixed_nii, fixed_path, None), fixed_nii.affine)
    moving = _nifti_to_ants(_volume(moving_nii, moving_path, None), moving_nii.affine)
    read_ants_transform(xfm_path)  # fail early, naming the transform file
    warped = _apply(fixed, moving, Path(xfm_path), interpolation)
    dtype = np.uint8 if interpolation == "nearestNeighbor" else np.float32
    return save_nifti(warped.numpy(), fixed_nii.affine, out_path, dtype=dtype)


def b0_volumes(dwi_path: PathLike, bval_path: PathLike, b0_threshold: float = 50.0) -> list[int]:
    """Indices of the b=0 volumes of a DWI, from its FSL ``.bval``.

    Args:
        dwi_path: the 4D DWI (only its volume count is read).
        bval_path: the FSL ``.bval`` file.
        b0_threshold: b values at or below this count as b=0.

    Returns:
        The indices, in order.
    """
    try:
        bvals = np.loadtxt(bval_path, dtype=float, ndmin=1).ravel()
    except (OSError, ValueError) as err:
        raise InputError(bval_path, f"unreadable bval file ({err})") from err
    shape = load_nifti(dwi_path).shape
    n_volumes = shape[3] if len(shape) == 4 else 1
    if len(bvals) != n_volumes:
        raise InputError(bval_path, f"{len(bvals)} b values for {n_volumes} DWI volumes")
    indices = [int(i) for i in np.flatnonzero(bvals <= b0_threshold)]
    if not indices:
        raise InputError(dwi_path, f"no b=0 volume (no b <= {b0_threshold:g} in {bval_path})")
    return indices


# --- internals -----------------------------------------------------------------------------------

def _volume(img: nib.Nifti1Image, path: PathLike,
            index: int | Sequence[int] | None) -> np.ndarray:
    """The 3D float32 array of ``img``: itself, one 4D volume, or the mean of several."""
    data = np.asarray(img.get_fdata(dtype=np.float32))
    if data.ndim == 4 and data.shape[3] == 1 and index is None:
        data = data[..., 0]
    if data.ndim == 3:
        if index not in (None, 0, [0], (0,)):
            raise InputError(path, f"3D image has no volume {index}")
        return data
    if data.ndim != 4:
        raise InputError(path, f"expected a 3D or 4D image, got {data.ndim}D")
    if index is None:
        raise InputError(path, "4D image: a volume to register must be chosen")
    indices = [index] if isinstance(index, int | np.integer) else list(index)
    if not indices or max(indices) >= data.shape[3] or min(indices) < -data.shape[3]:
        raise InputError(path, f"volume {index} out of range for {data.shape[3]} volumes")
    return data[..., indices].mean(axis=3)


def _nifti_to_ants(data: np.ndarray, affine: np.ndarray) -> ants.ANTsImage:
    """An ANTs image with the voxel order of ``data`` and the geometry of a RAS affine."""
    linear = np.asarray(affine, dtype=float)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    direction = _LPS @ (linear / spacing)
    origin = _LPS @ np.asarray(affine, dtype=float)[:3, 3]
    image = ants.from_numpy(np.ascontiguousarray(np.nan_to_num(data), dtype=np.float32),
                            origin=origin.tolist(), spacing=spacing.tolist(), direction=direction)
    return image


def _check_contrast(image: ants.ANTsImage, path: PathLike) -> None:
    """Reject images a registration cannot use: constant (no contrast for the metric)."""
    values = image.numpy()
    if not np.isfinite(values).all() or float(values.max() - values.min()) <= 0.0:
        raise InputError(path, "constant image: nothing to register")


def _mutual_information(fixed: ants.ANTsImage, moving_on_fixed: ants.ANTsImage) -> float:
    """Mattes MI with the sign flipped (ANTs returns the metric value to minimise)."""
    return -float(ants.image_mutual_information(fixed, moving_on_fixed))


@contextlib.contextmanager
def _ants_settings(threads: int, seed: int) -> Iterator[None]:
    """Set the ITK thread count and the ANTs random seed for one call, then restore the seed.

    ITK reads ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS once, at its first use in the process, so the
    variable is set before any ANTs call here; a later call asking another count gets a warning
    (each pipeline rule is its own process, so there the first call is the one that counts).
    """
    global _threads_in_effect
    wanted = max(1, int(threads))
    if _threads_in_effect is None:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(wanted)
        _threads_in_effect = wanted
    elif _threads_in_effect != wanted:
        _log.warning("ITK already runs with %d threads in this process; %d requested",
                     _threads_in_effect, wanted)
    saved_seed = ants.config._random_seed
    # antsRegistration gets --random-seed; it reads 0 as "seed from the clock", hence the + 1.
    ants.config._random_seed = int(seed) + 1
    try:
        yield
    finally:
        ants.config._random_seed = saved_seed


def _register(fixed: ants.ANTsImage, moving: ants.ANTsImage, moving_path: PathLike,
              work: Path, stages: Sequence[str] = _STAGES
              ) -> tuple[float, float, Path, ants.ANTsImage | None]:
    """Run rigid then affine; return MI before, MI after, the temporary ``.mat`` and, when
    the MI was measured on the fixed grid itself, the moving image resampled onto it."""
    shrink_factors, smoothing_sigmas = pyramid(fixed.spacing)
    qc_grid = _finest_level_grid(fixed, shrink_factors[-1])
    mi_before = _mutual_information(qc_grid,
                                    ants.resample_image_to_target(moving, qc_grid, "linear"))
    try:
        xfm = run_stages(fixed, moving, work, stages, shrink_factors, smoothing_sigmas)
    except (RuntimeError, ValueError) as err:
        raise InputError(moving_path, f"registration failed ({err})") from err
    _check_plausible(xfm, moving_path)
    moving_on_qc_grid = _apply(qc_grid, moving, xfm, "linear")
    mi_after = _mutual_information(qc_grid, moving_on_qc_grid)
    if mi_after < mi_before - _MI_DROP_TOLERANCE * abs(mi_before):
        raise InputError(moving_path, f"registration failed: mutual information fell from "
                                      f"{mi_before:.4f} to {mi_after:.4f}")
    return mi_before, mi_after, xfm, moving_on_qc_grid if qc_grid is fixed else None


def run_stages(fixed: ants.ANTsImage, moving: ants.ANTsImage, work: Path, stages: Sequence[str],
               shrink_factors: Sequence[int], smoothing_sigmas: Sequence[int]) -> Path:
    """The ANTs calls alone, one per stage, each started from the last; the ``.mat`` in
    ``work`` (``benchmarks/bench_preprocess.py`` times them against other pyramids)."""
    initial: list[str] | None = None  # None: ANTs aligns the centres of mass first
    for stage in stages:
        result = ants.registration(
            fixed, moving, type_of_transform=stage, initial_transform=initial,
            outprefix=str(work / f"{stage.lower()}_"), aff_metric=_METRIC,
            aff_sampling=_HISTOGRAM_BINS, aff_random_sampling_rate=_SAMPLING_RATE,
            aff_iterations=_ITERATIONS, aff_shrink_factors=tuple(shrink_factors),
            aff_smoothing_sigmas=tuple(smoothing_sigmas))
        # each stage's output already composes its initial transform (ANTs -z 1)
        initial = [result["fwdtransforms"][0]]
    return Path(initial[0])


def _finest_level_grid(fixed: ants.ANTsImage, shrink: int) -> ants.ANTsImage:
    """The fixed image on the pyramid's finest level, where the QC's MI is measured: itself,
    or (on grids finer than ``finest_level_mm``) linearly resampled to ``shrink`` times its
    voxel size. The MI of a 1 mm CE-T1 took 6 s per call at full resolution, two per job."""
    if shrink == 1:
        return fixed
    spacing = tuple(float(size) * shrink for size in fixed.spacing)
    return ants.resample_image(fixed, spacing, use_voxels=False, interp_type=0)


def pyramid(fixed_spacing_mm: Sequence[float]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shrink factors and smoothing sigmas (voxels) for a fixed image of this spacing.

    The base pyramid (4, 2, 1 with sigmas 2, 1, 0) is scaled by the largest power of two ``f``
    with ``f`` times the finest voxel size at most ``finest_level_mm``: a 1 mm CE-T1 is
    registered at 8, 4 and 2 mm (sigmas 3, 2, 1, ANTs' convention of log2 of the shrink);
    grids of 2 mm or coarser keep the base pyramid.
    """
    finest = float(min(fixed_spacing_mm))
    factor = 1
    while 2 * factor * finest <= _FINEST_LEVEL_MM * (1 + 1e-6):
        factor *= 2
    shrink = tuple(base * factor for base in _SHRINK_FACTORS)
    sigmas = tuple(sigma + factor.bit_length() - 1 for sigma in _SMOOTHING_SIGMAS)
    return shrink, sigmas


def _check_plausible(xfm: Path, moving_path: PathLike) -> None:
    """Reject transforms that scale far from 1 (a diverged optimisation, not anatomy)."""
    matrix = np.asarray(read_ants_transform(xfm).parameters, dtype=float)[:9].reshape(3, 3)
    scales = np.linalg.svd(matrix, compute_uv=False)
    if not np.all(np.isfinite(scales)) or np.any(np.abs(scales - 1.0) > _MAX_SCALE_DEVIATION):
        raise InputError(moving_path, f"registration failed: implausible scaling "
                                      f"{np.round(scales, 3).tolist()}")


def _apply(fixed: ants.ANTsImage, moving: ants.ANTsImage, xfm: Path,
           interpolation: str) -> ants.ANTsImage:
    """Resample ``moving`` onto the grid of ``fixed`` through the ``.mat`` transform."""
    try:
        return ants.apply_transforms(fixed, moving, transformlist=[str(xfm)],
                                     interpolator=interpolation)
    except (RuntimeError, ValueError) as err:
        raise InputError(xfm, f"cannot apply transform ({err})") from err


def _write_outputs(warped: ants.ANTsImage, fixed_affine: np.ndarray, out_path: PathLike,
                   xfm_tmp: Path, xfm_path: PathLike) -> None:
    """Write the resampled image and the transform; either both land or neither does."""
    with atomic_path(xfm_path) as xfm_stage, atomic_path(out_path) as image_stage:
        shutil.copyfile(xfm_tmp, xfm_stage)
        save_nifti(warped.numpy(), fixed_affine, image_stage, dtype=np.float32)


def write_qc_row(
    result: RegistrationResult,
    scan_id: str,
    modality: str,
    out_tsv: PathLike,
    *,
    truth_json: PathLike | None = None,
    truth_mask: PathLike | None = None,
    method: str | None = None,
) -> dict[str, float]:
    """Write one registration's QC row; with phantom ground truth, add the displacement error.

    Args:
        result: the registration.
        scan_id: the subject (and session) label.
        modality: the moving modality (``T1w``, ``T2w``, ``FLAIR`` or ``dwi``).
        out_tsv: the one-row QC table to write.
        truth_json: the phantom's ``desc-transforms.json`` (``ceT1w_to_<modality>``), if known;
            without that key the row has no displacement error.
        truth_mask: the true brain mask on the CE-T1 grid, over which the error is averaged.
        method: how the image was brought to the CE-T1 (a ``method`` column, e.g.
            :data:`IDENTITY_METHOD`, which also drops the ``mi_not_improved`` flag: nothing was
            optimised); None for none.

    Returns:
        The metrics of the row (for MLflow).
    """
    from cesynth import qc
    from cesynth.io import read_json

    metrics: dict[str, float] = {
        "mi_before": result.mi_before, "mi_after": result.mi_after, "seconds": result.seconds,
    }
    truth = read_json(truth_json) if truth_json is not None and truth_mask is not None else {}
    if f"ceT1w_to_{modality}" in truth:  # a phantom written without a FLAIR has none for it
        true_matrix = np.asarray(truth[f"ceT1w_to_{modality}"])
        error = displacement_error_mm(result.transform_path, true_matrix, truth_mask)
        metrics["truth_mean_displacement_mm"] = error["mean_mm"]
        metrics["truth_max_displacement_mm"] = error["max_mm"]
    flags = {} if method == IDENTITY_METHOD else {
        "mi_not_improved": result.mi_after <= result.mi_before}
    named = {"modality": modality, **({"method": method} if method else {})}
    qc.write_row(qc.qc_row("registration", scan_id, {**named, **metrics}, flags), out_tsv)
    return {**metrics, **{name: float(flag) for name, flag in flags.items()}}
