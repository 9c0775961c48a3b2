"""Physics-based synthetic brain-tumor cohort, written as a BIDS dataset.

Each subject is a head built from the MNI ICBM152 2009a tissue maps that nilearn ships (grey and
white matter probabilities, brain mask), warped by a smooth random deformation and wrapped in a
CSF layer, a skull shell and a scalp-fat shell. Tumors (necrotic core, enhancing rim, surrounding
edema) and enhancing vessels are painted in. Every tissue gets T1, T2, proton density, ADC and a
contrast-agent concentration drawn within the SPEC's 3 T ranges.

Each scan is acquired on its own grid with its own rigid head pose: the *parameter maps* are
resampled onto the scan's grid (thick slices: averaged over sub-slices) and only then put through
the signal equation, so the noise-free DWI gives back the saved true ADC exactly. A smooth bias
field and Rician noise finish the images.

Coordinates. The "head frame" is the MNI-like world space of the anatomy grid. A scan of
modality m with voxel-to-world affine A_m (its NIfTI affine, the nominal scanner affine) shows at
world point x the head at point P_m @ x, where P_m is the scan's rigid head pose. A point y of the
CE-T1 world therefore corresponds to the point inv(P_m) @ P_ce @ y of m's world: that matrix is
saved as ``ceT1w_to_<m>`` (what a registration with fixed = CE-T1 and moving = m estimates).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from cesynth import __version__
from cesynth.io import InputError, atomic_path, save_nifti, write_json, write_tsv

MODALITIES = ("T1w", "ceT1w", "T2w", "dwi")
MOVING_MODALITIES = ("T1w", "T2w", "dwi")
REFERENCE_MODALITY = "ceT1w"
B_VALUES = (0.0, 500.0, 500.0, 500.0, 1000.0, 1000.0, 1000.0)
B_VECTORS = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1))
# Acquisition parameters (ms, degrees) actually used for the images.
SPGR = {"tr_ms": 8.0, "te_ms": 3.0, "flip_deg": 12.0}
T2_SE = {"tr_ms": 4000.0, "te_ms": 100.0}
DWI_SE = {"tr_ms": 5000.0, "te_ms": 80.0}
GADOLINIUM_R1_PER_MM_S = 4.0
# Signal level of white matter after scaling (b = 0 for DWI): a plausible scanner range.
WM_SCANNER_SIGNAL = 1000.0

# Brain-mask bounding box of the 1 mm ICBM152 mask (world mm), so grids need no template load.
_BRAIN_BOX_MIN = np.array([-72.0, -107.0, -72.0])
_BRAIN_BOX_MAX = np.array([72.0, 73.0, 82.0])
HEAD_CENTER = (_BRAIN_BOX_MIN + _BRAIN_BOX_MAX) / 2
# Nominal thickness (mm) of the shells outside the brain; each is at least one voxel.
LAYERS_MM = {"csf": 3.0, "skull": 6.0, "fat": 6.0}

# Tissue labels of the anatomy grid.
LABELS = ("background", "csf", "gm", "wm", "edema", "rim", "core", "vessel", "fat", "skull")
LABEL = {name: index for index, name in enumerate(LABELS)}

# SPEC "Phantom physics" table: (low, high) per parameter; ADC in mm2/s, agent in mM.
TISSUE_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "wm": {"t1_ms": (830, 1100), "t2_ms": (70, 80), "pd": (0.69, 0.69),
           "adc_mm2_s": (0.70e-3, 0.80e-3), "agent_mM": (0, 0)},
    "gm": {"t1_ms": (1300, 1800), "t2_ms": (80, 110), "pd": (0.80, 0.80),
           "adc_mm2_s": (0.80e-3, 0.90e-3), "agent_mM": (0, 0)},
    "csf": {"t1_ms": (4000, 4500), "t2_ms": (1500, 2000), "pd": (1.0, 1.0),
            "adc_mm2_s": (3.0e-3, 3.0e-3), "agent_mM": (0, 0)},
    "edema": {"t1_ms": (1800, 2200), "t2_ms": (150, 250), "pd": (0.85, 0.85),
              "adc_mm2_s": (1.3e-3, 1.6e-3), "agent_mM": (0, 0)},
    "rim": {"t1_ms": (1500, 2000), "t2_ms": (100, 150), "pd": (0.85, 0.85),
            "adc_mm2_s": (1.0e-3, 1.3e-3), "agent_mM": (0.1, 0.5)},
    "core": {"t1_ms": (2500, 3000), "t2_ms": (200, 300), "pd": (0.90, 0.90),
             "adc_mm2_s": (1.5e-3, 2.5e-3), "agent_mM": (0, 0)},
    "vessel": {"t1_ms": (1650, 1900), "t2_ms": (150, 150), "pd": (0.85, 0.85),
               "adc_mm2_s": (2.0e-3, 2.0e-3), "agent_mM": (0.9, 1.1)},
    "fat": {"t1_ms": (370, 400), "t2_ms": (60, 130), "pd": (0.90, 0.90),
            "adc_mm2_s": (0.05e-3, 0.05e-3), "agent_mM": (0, 0)},
    "skull": {"t1_ms": (1000, 1000), "t2_ms": (1, 1), "pd": (0.05, 0.05),
              "adc_mm2_s": (0.1e-3, 0.1e-3), "agent_mM": (0, 0)},
}
# Air: no signal. T1/T2 stay positive so the signal equations never divide by zero.
_BACKGROUND = {"t1_ms": 1000.0, "t2_ms": 1.0, "pd": 0.0, "adc_mm2_s": 0.0, "agent_mM": 0.0}
PARAMETER_NAMES = ("pd", "t1_ms", "t2_ms", "adc_mm2_s", "agent_mM")
# Below this the resampled agent is numerical dust, not enhancement.
_AGENT_FLOOR_MM = 1e-6

# Independent random streams of one subject, so changing one part never shifts another.
_STREAM = {"tissue": 1, "deformation": 2, "tumors": 3, "vessels": 4, "poses": 5,
           "bias": 6, "noise": 7}


@dataclass(frozen=True)
class PhantomSettings:
    """Size, resolution and acquisition imperfections of the phantom.

    T2w and DWI voxel sizes left as ``None`` follow ``voxel_mm``: T2w in-plane = voxel_mm,
    slices 2.5 x voxel_mm; DWI in-plane 1.25 x voxel_mm, slices 2.5 x voxel_mm.
    """

    voxel_mm: float = 2.0
    t2_inplane_mm: float | None = None
    t2_slice_mm: float | None = None
    dwi_inplane_mm: float | None = None
    dwi_slice_mm: float | None = None
    max_rotation_deg: float = 6.0
    max_translation_mm: float = 6.0
    deformation_mm: float = 3.0
    snr: float = 40.0
    bias_field: float = 0.15
    max_tumors: int = 2
    head_scale_range: tuple[float, float] = (0.86, 0.94)

    def __post_init__(self) -> None:
        derived = {"t2_inplane_mm": 1.0, "t2_slice_mm": 2.5, "dwi_inplane_mm": 1.25,
                   "dwi_slice_mm": 2.5}
        for name, factor in derived.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, factor * self.voxel_mm)
        if self.voxel_mm <= 0 or self.snr <= 0 or self.max_tumors < 0:
            raise ValueError("PhantomSettings: voxel_mm and snr must be > 0, max_tumors >= 0")


@dataclass(frozen=True)
class TissueParams:
    """MR parameters of one tissue: T1, T2 (ms), proton density, ADC (mm2/s), agent (mM)."""

    t1_ms: float
    t2_ms: float
    pd: float
    adc_mm2_s: float
    agent_mM: float


@dataclass(frozen=True)
class Grid:
    """A voxel grid: array shape and voxel-to-world (RAS mm) affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def voxel_mm(self) -> np.ndarray:
        """Voxel edge lengths (mm) along the three array axes."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)


@dataclass
class Anatomy:
    """One subject's head on the anatomy grid (head frame).

    ``maps`` holds the parameter maps (PD, T1, T2, ADC, agent; float32) and ``indicators`` the
    ground-truth regions as 0/1 float32 maps (brain, enhancing rim, tumor = rim + core), both
    ready to be resampled onto a scan's grid.
    """

    grid: Grid
    labels: np.ndarray
    maps: dict[str, np.ndarray]
    indicators: dict[str, np.ndarray]
    tissues: dict[str, TissueParams]
    tumors: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------- signal physics


def spgr_signal(pd_: Any, t1_ms: Any, t2_ms: Any, tr_ms: float = 8.0, te_ms: float = 3.0,
                flip_deg: float = 12.0) -> np.ndarray:
    """Spoiled gradient echo: S = PD sin(a) (1 - E1) / (1 - cos(a) E1) exp(-TE/T2*), T2* ~ T2.

    Args:
        pd_: proton density.
        t1_ms: T1 (ms).
        t2_ms: T2 (ms), used for T2*.
        tr_ms: repetition time (ms).
        te_ms: echo time (ms).
        flip_deg: flip angle (degrees).

    Returns:
        The signal, broadcast over the inputs.
    """
    flip = np.deg2rad(flip_deg)
    e1 = np.exp(-tr_ms / np.asarray(t1_ms, dtype=float))
    return (np.asarray(pd_, dtype=float) * np.sin(flip) * (1 - e1) / (1 - np.cos(flip) * e1)
            * np.exp(-te_ms / np.asarray(t2_ms, dtype=float)))


def spin_echo_signal(pd_: Any, t1_ms: Any, t2_ms: Any, tr_ms: float, te_ms: float) -> np.ndarray:
    """Spin echo: S = PD (1 - exp(-TR/T1)) exp(-TE/T2).

    Args:
        pd_: proton density.
        t1_ms: T1 (ms).
        t2_ms: T2 (ms).
        tr_ms: repetition time (ms).
        te_ms: echo time (ms).

    Returns:
        The signal, broadcast over the inputs.
    """
    t1 = np.asarray(t1_ms, dtype=float)
    t2 = np.asarray(t2_ms, dtype=float)
    return np.asarray(pd_, dtype=float) * (1 - np.exp(-tr_ms / t1)) * np.exp(-te_ms / t2)


def dwi_signal(s0: Any, adc_mm2_s: Any, b_s_mm2: float) -> np.ndarray:
    """Isotropic diffusion weighting: S(b) = S0 exp(-b ADC).

    Args:
        s0: signal at b = 0.
        adc_mm2_s: apparent diffusion coefficient (mm2/s).
        b_s_mm2: b value (s/mm2).

    Returns:
        The diffusion-weighted signal.
    """
    return np.asarray(s0, dtype=float) * np.exp(-b_s_mm2 * np.asarray(adc_mm2_s, dtype=float))


def t1_post_contrast(t1_ms: Any, agent_mM: Any,
                     r1_per_mM_s: float = GADOLINIUM_R1_PER_MM_S) -> np.ndarray:
    """T1 shortened by a contrast agent: 1/T1post = 1/T1pre + r1 C (rates in 1/s).

    Args:
        t1_ms: pre-contrast T1 (ms).
        agent_mM: agent concentration (mM).
        r1_per_mM_s: relaxivity (1/(mM s)).

    Returns:
        Post-contrast T1 (ms).
    """
    t1 = np.asarray(t1_ms, dtype=float)
    agent = np.asarray(agent_mM, dtype=float)
    rate_per_s = 1000.0 / t1 + r1_per_mM_s * agent
    # Without agent keep T1 bit-exact (1000 / (1000 / T1) may round differently).
    return np.where(agent > 0, 1000.0 / rate_per_s, t1)


def add_rician_noise(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise: |S + n1 + i n2|.

    Args:
        signal: noise-free magnitude signal.
        sigma: standard deviation of each of n1 and n2.
        rng: random generator.

    Returns:
        The noisy magnitude, float32, same shape.
    """
    real = np.asarray(signal, dtype=np.float32) + rng.normal(0.0, sigma, np.shape(signal)).astype(
        np.float32)
    imaginary = rng.normal(0.0, sigma, np.shape(signal)).astype(np.float32)
    return np.hypot(real, imaginary)


def tissue_parameters(rng: np.random.Generator) -> dict[str, TissueParams]:
    """Draw one subject's tissue parameters uniformly within the SPEC ranges.

    Args:
        rng: random generator (per subject).

    Returns:
        Tissue name -> parameters, for every tissue of ``TISSUE_RANGES`` plus ``background``.
    """
    tissues = {"background": TissueParams(**_BACKGROUND)}
    for name, ranges in TISSUE_RANGES.items():
        tissues[name] = TissueParams(**{key: float(rng.uniform(low, high))
                                        for key, (low, high) in ranges.items()})
    return tissues


def noise_free_image(modality: str, maps: Mapping[str, np.ndarray]) -> np.ndarray:
    """Scanner-scaled, noise- and bias-free image of a modality from parameter maps on its grid.

    Args:
        modality: one of ``MODALITIES``; ``ceT1w`` shortens T1 by the agent, ``T1w`` ignores it.
        maps: parameter maps (``PARAMETER_NAMES``) sampled on the modality's grid.

    Returns:
        Float64 image; 4D (last axis = ``B_VALUES``) for ``dwi``.
    """
    gain = WM_SCANNER_SIGNAL / _white_matter_reference(modality)
    pd_, t1, t2 = maps["pd"], maps["t1_ms"], maps["t2_ms"]
    if modality in ("T1w", "ceT1w"):
        if modality == "ceT1w":
            t1 = t1_post_contrast(t1, maps["agent_mM"])
        return gain * spgr_signal(pd_, t1, t2, **SPGR)
    if modality == "T2w":
        return gain * spin_echo_signal(pd_, t1, t2, **T2_SE)
    if modality == "dwi":
        s0 = gain * spin_echo_signal(pd_, t1, t2, **DWI_SE)
        return np.stack([dwi_signal(s0, maps["adc_mm2_s"], b) for b in B_VALUES], axis=-1)
    raise ValueError(f"unknown modality {modality!r}")


def _white_matter_reference(modality: str) -> float:
    """Unscaled signal of a mid-range white matter (b = 0 for DWI): fixes each scanner gain."""
    wm = {key: sum(bounds) / 2 for key, bounds in TISSUE_RANGES["wm"].items()}
    if modality in ("T1w", "ceT1w"):
        return float(spgr_signal(wm["pd"], wm["t1_ms"], wm["t2_ms"], **SPGR))
    acquisition = T2_SE if modality == "T2w" else DWI_SE
    return float(spin_echo_signal(wm["pd"], wm["t1_ms"], wm["t2_ms"], **acquisition))


# ----------------------------------------------------------------------------- grids and poses


def _layer_thickness_mm(voxel_mm: float) -> dict[str, float]:
    return {name: max(mm, voxel_mm) for name, mm in LAYERS_MM.items()}


def _head_half_extent_mm(settings: PhantomSettings) -> np.ndarray:
    outside_mm = sum(_layer_thickness_mm(settings.voxel_mm).values()) + settings.deformation_mm
    return (_BRAIN_BOX_MAX - _BRAIN_BOX_MIN) / 2 + outside_mm


def _centered_grid(center: np.ndarray, half_extent_mm: np.ndarray, voxel_mm: np.ndarray) -> Grid:
    shape = np.ceil(2 * half_extent_mm / voxel_mm).astype(int)
    affine = np.diag([*voxel_mm, 1.0])
    affine[:3, 3] = center - (shape - 1) / 2 * voxel_mm
    return Grid(tuple(int(n) for n in shape), affine)


def anatomy_grid(settings: PhantomSettings) -> Grid:
    """The head-frame grid the anatomy is built on: brain box + shells + margin, at voxel_mm.

    Args:
        settings: phantom settings.

    Returns:
        The anatomy grid.
    """
    half = _head_half_extent_mm(settings) + 2 * settings.voxel_mm
    return _centered_grid(HEAD_CENTER, half, np.full(3, settings.voxel_mm))


def acquisition_grids(settings: PhantomSettings) -> dict[str, Grid]:
    """Nominal scanner grids of the four scans; each has its own field of view and voxels.

    Args:
        settings: phantom settings.

    Returns:
        Modality -> grid. T1w and ceT1w are isotropic at voxel_mm; T2w and dwi thick axial slices.
    """
    head = _head_half_extent_mm(settings)
    combined_rotation = math.sin(math.radians(settings.max_rotation_deg) * math.sqrt(3))
    half = head + settings.max_translation_mm + head.max() * combined_rotation + settings.voxel_mm
    square = np.array([half[:2].max(), half[:2].max(), half[2]])
    iso = np.full(3, settings.voxel_mm)
    t2_voxel = np.array([settings.t2_inplane_mm, settings.t2_inplane_mm, settings.t2_slice_mm])
    dwi_voxel = np.array([settings.dwi_inplane_mm, settings.dwi_inplane_mm, settings.dwi_slice_mm])
    return {
        "T1w": _centered_grid(HEAD_CENTER, half, iso),
        "ceT1w": _centered_grid(HEAD_CENTER + iso * [0.5, -0.5, 0.25],
                                half + [6.0, 4.0, 8.0], iso),
        "T2w": _centered_grid(HEAD_CENTER + [0.0, 3.0, -2.0], square + [4.0, 4.0, 0.0], t2_voxel),
        "dwi": _centered_grid(HEAD_CENTER + [0.0, -2.0, 4.0], square, dwi_voxel),
    }


def rigid_matrix(rotation_deg: Any, translation_mm: Any, center: Any = HEAD_CENTER) -> np.ndarray:
    """4x4 rigid transform: rotation (x, then y, then z axis; degrees) about ``center``, then shift.

    Args:
        rotation_deg: three rotation angles (degrees).
        translation_mm: translation (mm).
        center: rotation center (world mm).

    Returns:
        The 4x4 matrix.
    """
    ax, ay, az = np.deg2rad(rotation_deg)
    rot_x = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rot_y = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rot_z = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rotation = rot_z @ rot_y @ rot_x
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = np.asarray(center) - rotation @ np.asarray(center) + np.asarray(translation_mm)
    return matrix


def head_poses(rng: np.random.Generator, settings: PhantomSettings) -> dict[str, np.ndarray]:
    """Random rigid head pose of each scan: maps a scanner-world point to the head frame.

    Args:
        rng: random generator.
        settings: limits of rotation (each axis) and translation (each axis).

    Returns:
        Modality -> 4x4 pose matrix.
    """
    poses = {}
    for modality in MODALITIES:
        rotation = rng.uniform(-settings.max_rotation_deg, settings.max_rotation_deg, 3)
        translation = rng.uniform(-settings.max_translation_mm, settings.max_translation_mm, 3)
        poses[modality] = rigid_matrix(rotation, translation)
    return poses


def true_transforms(poses: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """World-to-world transforms between the CE-T1 and each moving scan, with their convention.

    Args:
        poses: modality -> head pose (from :func:`head_poses`).

    Returns:
        JSON-ready dict: ``ceT1w_to_<m>`` and ``<m>_to_ceT1w`` 4x4 lists, the poses, a convention.
    """
    out: dict[str, Any] = {
        "convention": (
            "RAS+ world coordinates in mm, as given by each image's NIfTI affine. "
            "'ceT1w_to_<m>' maps a point y of the CE-T1 world to the point x = M @ [y, 1] of "
            "modality m's world showing the same anatomy (what a registration with fixed = CE-T1 "
            "and moving = m estimates, e.g. ANTs; ITK/ANTs work in LPS: conjugate with "
            "diag(-1, -1, 1, 1) to compare). '<m>_to_ceT1w' is its inverse. 'head_pose' maps a "
            "scan's world point to the phantom's head frame: ceT1w_to_m = inv(pose_m) @ pose_ce."),
        "reference": REFERENCE_MODALITY,
        "head_pose": {m: np.asarray(p).tolist() for m, p in poses.items()},
    }
    for modality in MOVING_MODALITIES:
        forward = np.linalg.inv(poses[modality]) @ poses[REFERENCE_MODALITY]
        out[f"ceT1w_to_{modality}"] = forward.tolist()
        out[f"{modality}_to_ceT1w"] = np.linalg.inv(forward).tolist()
    return out


# ----------------------------------------------------------------------------- resampling


def sample_on_grid(
    volumes: Mapping[str, np.ndarray],
    source: Grid,
    grid: Grid,
    pose: np.ndarray,
    fill: Mapping[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Resample head-frame volumes onto a scan's grid through its head pose (trilinear).

    Along the slice axis (axis 2) the volumes are averaged over sub-slices spaced at most one
    source voxel apart, which mimics the slice thickness of thick-slice scans.

    Args:
        volumes: name -> volume on ``source``.
        source: grid of the volumes (head frame).
        grid: target scan grid (its scanner world).
        pose: scan world -> head frame, 4x4.
        fill: value outside ``source`` per name (default 0).

    Returns:
        Name -> float64 volume of ``grid.shape``.
    """
    fill = fill or {}
    to_source = np.linalg.inv(source.affine) @ pose @ grid.affine
    n_sub = max(1, math.ceil(grid.voxel_mm[2] / source.voxel_mm.min() - 1e-6))
    offsets = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    out = {name: np.zeros(grid.shape) for name in volumes}
    nx, ny, nz = grid.shape
    slices_per_chunk = max(1, 1_000_000 // (nx * ny))
    ij = np.indices((nx, ny)).reshape(2, -1).astype(float)
    in_plane = to_source[:3, :2] @ ij + to_source[:3, 3:]
    for start in range(0, nz, slices_per_chunk):
        ks = np.arange(start, min(nz, start + slices_per_chunk), dtype=float)
        for offset in offsets:
            through_plane = to_source[:3, 2][:, None, None] * (ks + offset)[None, :, None]
            coords = (in_plane[:, None, :] + through_plane).reshape(3, -1)
            for name, volume in volumes.items():
                values = ndimage.map_coordinates(volume, coords, order=1, mode="constant",
                                                 cval=fill.get(name, 0.0), prefilter=False)
                block = values.reshape(len(ks), nx, ny).transpose(1, 2, 0)
                out[name][:, :, start:start + len(ks)] += block / n_sub
    return out


def sample_parameter_maps(anatomy: Anatomy, grid: Grid, pose: np.ndarray,
                          names: tuple[str, ...] = PARAMETER_NAMES) -> dict[str, np.ndarray]:
    """Parameter maps of the subject on a scan grid (resampled maps, not resampled signals).

    Args:
        anatomy: the subject.
        grid: scan grid.
        pose: the scan's head pose.
        names: which maps.

    Returns:
        Name -> float64 map on ``grid``; agent below numerical dust is set to exactly 0.
    """
    maps = sample_on_grid({n: anatomy.maps[n] for n in names}, anatomy.grid, grid, pose,
                          fill=_BACKGROUND)
    if "agent_mM" in maps:
        maps["agent_mM"][maps["agent_mM"] < _AGENT_FLOOR_MM] = 0.0
    return maps


def sample_indicators(anatomy: Anatomy, grid: Grid, pose: np.ndarray) -> dict[str, np.ndarray]:
    """Ground-truth masks (brain, enhancing, tumor) on a scan grid: resampled fraction >= 0.5.

    Args:
        anatomy: the subject.
        grid: scan grid.
        pose: the scan's head pose.

    Returns:
        Name -> uint8 mask on ``grid``.
    """
    fractions = sample_on_grid(anatomy.indicators, anatomy.grid, grid, pose)
    return {name: (fraction >= 0.5).astype(np.uint8) for name, fraction in fractions.items()}


# ----------------------------------------------------------------------------- anatomy


@functools.lru_cache(maxsize=1)
def _mni_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GM and WM probabilities, brain mask (float32, 1 mm) and their affine, loaded once."""
    from nilearn import datasets

    gm = datasets.load_mni152_gm_template(resolution=1)
    wm = datasets.load_mni152_wm_template(resolution=1)
    brain = datasets.load_mni152_brain_mask(resolution=1)
    return (np.asarray(gm.dataobj, dtype=np.float32), np.asarray(wm.dataobj, dtype=np.float32),
            np.asarray(brain.dataobj, dtype=np.float32), gm.affine)


@functools.lru_cache(maxsize=2)
def _mni_maps_binned(factor: int) -> tuple[dict[str, np.ndarray], Grid]:
    """MNI maps block-averaged by ``factor`` (anti-aliasing before coarse sampling)."""
    gm, wm, brain, affine = _mni_maps()
    binned = {name: _block_mean(volume, factor)
              for name, volume in (("gm", gm), ("wm", wm), ("brain", brain))}
    binned_affine = affine.copy()
    binned_affine[:3, :3] *= factor
    binned_affine[:3, 3] += affine[:3, :3] @ np.full(3, (factor - 1) / 2)
    return binned, Grid(binned["gm"].shape, binned_affine)


def _block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return volume
    shape = [-(-n // factor) * factor for n in volume.shape]
    padded = np.zeros(shape, dtype=np.float32)
    padded[tuple(slice(0, n) for n in volume.shape)] = volume
    blocks = padded.reshape(shape[0] // factor, factor, shape[1] // factor, factor,
                            shape[2] // factor, factor)
    return blocks.mean(axis=(1, 3, 5), dtype=np.float32)


def smooth_random_field(rng: np.random.Generator, shape: tuple[int, ...],
                        spacing_voxels: float) -> np.ndarray:
    """Smooth random field with unit peak magnitude: coarse noise upsampled by cubic splines.

    Args:
        rng: random generator.
        shape: output shape.
        spacing_voxels: control-point spacing (voxels); larger is smoother.

    Returns:
        Float32 field scaled so that max |field| = 1.
    """
    coarse_shape = [max(2, math.ceil(n / spacing_voxels) + 1) for n in shape]
    coarse = rng.standard_normal(coarse_shape)
    # Cubic up to a grid a few times coarser than the output, then linear: smooth, and far
    # cheaper than a cubic zoom onto the full grid.
    step = max(1, min(4, int(spacing_voxels // 4)))
    middle_shape = [math.ceil(n / step) for n in shape]
    middle = ndimage.zoom(coarse, [m / c for m, c in zip(middle_shape, coarse_shape, strict=True)],
                          order=3, grid_mode=True, mode="grid-constant")
    field_ = middle.astype(np.float32)
    if step > 1:
        field_ = ndimage.zoom(field_, step, order=1, grid_mode=True, mode="nearest")
    field_ = field_[tuple(slice(0, n) for n in shape)]
    return field_ / max(float(np.abs(field_).max()), 1e-12)


def _deformed_tissue_fractions(rng: np.random.Generator, grid: Grid,
                               settings: PhantomSettings) -> dict[str, np.ndarray]:
    """GM, WM and brain fractions on the anatomy grid, sampled at a scaled x + d(x) (smooth d).

    The MNI template is larger than real heads (its brain mask holds about 1.9 l), so each head
    is shrunk about its centre by a per-subject factor to a realistic intracranial volume.
    """
    maps, map_grid = _mni_maps_binned(max(1, int(settings.voxel_mm)))
    spacing = 24.0 / settings.voxel_mm
    displacement = np.stack([smooth_random_field(rng, grid.shape, spacing) for _ in range(3)])
    peak = float(np.sqrt((displacement ** 2).sum(axis=0)).max())
    displacement *= settings.deformation_mm / max(peak, 1e-12)
    head_scale = float(rng.uniform(*settings.head_scale_range))
    voxels = np.indices(grid.shape, dtype=np.float32).reshape(3, -1)
    world = grid.affine[:3, :3] @ voxels + grid.affine[:3, 3:] + displacement.reshape(3, -1)
    center = HEAD_CENTER.reshape(3, 1)
    template_world = center + (world - center) / head_scale
    to_map = np.linalg.inv(map_grid.affine)
    coords = to_map[:3, :3] @ template_world + to_map[:3, 3:]
    return {name: ndimage.map_coordinates(volume, coords, order=1, mode="constant", cval=0.0,
                                          prefilter=False).reshape(grid.shape)
            for name, volume in maps.items()}


def _base_labels(fractions: Mapping[str, np.ndarray], voxel_mm: float) -> np.ndarray:
    """Brain tissues by majority (CSF = rest of the brain mask), then the shells outside."""
    brain = fractions["brain"] >= 0.5
    csf_fraction = 1.0 - fractions["gm"] - fractions["wm"]
    majority = np.argmax(np.stack([csf_fraction, fractions["gm"], fractions["wm"]]), axis=0)
    labels = np.zeros(brain.shape, dtype=np.uint8)
    labels[brain] = np.array([LABEL["csf"], LABEL["gm"], LABEL["wm"]], np.uint8)[majority[brain]]
    distance_mm = ndimage.distance_transform_edt(~brain, sampling=voxel_mm)
    outer_mm = 0.0
    for name, thickness in _layer_thickness_mm(voxel_mm).items():
        shell = (distance_mm > outer_mm) & (distance_mm <= outer_mm + thickness)
        labels[shell] = LABEL[name]
        outer_mm += thickness
    return labels


def _place_tumors(rng: np.random.Generator, labels: np.ndarray, brain: np.ndarray,
                  n_tumors: int, voxel_mm: float) -> list[dict[str, Any]]:
    """Paint tumors into ``labels`` (in place): edema in parenchyma, rim and necrotic core."""
    depth_mm = ndimage.distance_transform_edt(brain, sampling=voxel_mm)
    parenchyma = np.isin(labels, [LABEL["gm"], LABEL["wm"]])
    tumors: list[dict[str, Any]] = []
    for _ in range(n_tumors):
        rim_radius = max(float(rng.uniform(8.0, 14.0)), 2.5 * voxel_mm)
        core_fraction = min(float(rng.uniform(0.4, 0.6)), 1 - 1.2 * voxel_mm / rim_radius)
        edema_radius = rim_radius * float(rng.uniform(1.6, 2.2))
        center = _tumor_center(rng, parenchyma & (depth_mm >= rim_radius + 6.0), tumors,
                               rim_radius, voxel_mm)
        if center is None:
            continue
        lesion_q, edema_q, box = _tumor_shape(rng, center, rim_radius, edema_radius,
                                              labels.shape, voxel_mm)
        local = labels[box]
        local[(edema_q < 1) & parenchyma[box]] = LABEL["edema"]
        local[(lesion_q < 1) & brain[box]] = LABEL["rim"]
        local[(lesion_q < core_fraction) & brain[box]] = LABEL["core"]
        tumors.append({"center_voxel": center.tolist(), "rim_radius_mm": rim_radius,
                       "core_fraction": core_fraction, "edema_radius_mm": edema_radius})
    return tumors


def _tumor_center(rng: np.random.Generator, candidates: np.ndarray,
                  tumors: list[dict[str, Any]], rim_radius: float,
                  voxel_mm: float) -> np.ndarray | None:
    points = np.argwhere(candidates)
    for tumor in tumors:
        gap_voxels = (tumor["edema_radius_mm"] + rim_radius) / voxel_mm
        points = points[np.linalg.norm(points - tumor["center_voxel"], axis=1) > gap_voxels]
    if len(points) == 0:
        return None
    return points[rng.integers(len(points))]


def _tumor_shape(rng: np.random.Generator, center: np.ndarray, rim_radius: float,
                 edema_radius: float, shape: tuple[int, ...],
                 voxel_mm: float) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...]]:
    """Normalised radii (1 = boundary) of an irregular lesion and its edema, in a local box."""
    reach = math.ceil(1.4 * edema_radius / voxel_mm)
    box = tuple(slice(max(0, c - reach), min(n, c + reach + 1))
                for c, n in zip(center, shape, strict=True))
    offsets_mm = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) - c
                                        for s, c in zip(box, center, strict=True)],
                                      indexing="ij")) * voxel_mm
    orientation = rigid_matrix(rng.uniform(-180, 180, 3), np.zeros(3), np.zeros(3))[:3, :3]
    stretch = rng.uniform(0.75, 1.25, 3)
    local = np.einsum("ij,j...->i...", orientation.T, offsets_mm) / stretch[:, None, None, None]
    radius_mm = np.sqrt((local ** 2).sum(axis=0))
    box_shape = radius_mm.shape
    spacing = 6.0 / voxel_mm
    lesion_noise = smooth_random_field(rng, box_shape, spacing)
    edema_noise = smooth_random_field(rng, box_shape, spacing)
    lesion_q = radius_mm / rim_radius * (1 + 0.25 * lesion_noise)
    edema_q = radius_mm / edema_radius * (1 + 0.3 * edema_noise)
    return lesion_q, edema_q, box


def _paint_vessels(rng: np.random.Generator, labels: np.ndarray, brain: np.ndarray,
                   grid: Grid) -> None:
    """Superior sagittal sinus along the top midline, plus a few cortical veins (in place)."""
    voxel_mm = float(grid.voxel_mm[0])
    sinus = _sinus_path(brain, grid)
    veins = [_cortical_vein_path(rng, brain, grid) for _ in range(int(rng.integers(2, 5)))]
    for points_mm, radius_mm in [(sinus, max(3.0, 0.8 * voxel_mm))] + [
            (vein, max(1.5, 0.6 * voxel_mm)) for vein in veins]:
        seeds = np.zeros(labels.shape, dtype=bool)
        voxels = _world_to_voxel(grid, _densify(points_mm, voxel_mm / 2))
        inside = np.all((voxels >= 0) & (voxels < np.array(labels.shape)), axis=1)
        seeds[tuple(voxels[inside].T)] = True
        if not seeds.any():
            continue
        tube = ndimage.distance_transform_edt(~seeds, sampling=voxel_mm) <= radius_mm
        labels[tube & ~np.isin(labels, [LABEL["rim"], LABEL["core"], LABEL["background"]])] = (
            LABEL["vessel"])


def _world_to_voxel(grid: Grid, points_mm: np.ndarray) -> np.ndarray:
    to_voxel = np.linalg.inv(grid.affine)
    return np.rint(points_mm @ to_voxel[:3, :3].T + to_voxel[:3, 3]).astype(int)


def _densify(points_mm: np.ndarray, step_mm: float) -> np.ndarray:
    if len(points_mm) < 2:
        return points_mm
    pieces = []
    for start, end in zip(points_mm[:-1], points_mm[1:], strict=True):
        n = max(1, math.ceil(np.linalg.norm(end - start) / step_mm))
        pieces.append(start + np.linspace(0, 1, n, endpoint=False)[:, None] * (end - start))
    return np.vstack([*pieces, points_mm[-1:]])


def _sinus_path(brain: np.ndarray, grid: Grid) -> np.ndarray:
    """Points (world mm) just above the top of the brain along the mid-sagittal plane."""
    midline = int(round(np.linalg.inv(grid.affine)[0] @ [0.0, 0.0, 0.0, 1.0]))
    column_has_brain = brain[midline].any(axis=1)
    top = brain.shape[2] - 1 - np.argmax(brain[midline, :, ::-1], axis=1)
    center_k = np.linalg.inv(grid.affine)[2] @ [*HEAD_CENTER, 1.0]
    rows = np.flatnonzero(column_has_brain & (top > center_k))
    voxels = np.stack([np.full(len(rows), midline), rows, top[rows] + 0.5], axis=1)
    points = voxels @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    points[:, 2] += 2.0
    return points


def _cortical_vein_path(rng: np.random.Generator, brain: np.ndarray, grid: Grid) -> np.ndarray:
    """A random arc over the upper brain convexity, 1 mm outside the brain surface (world mm)."""
    direction = rng.normal(size=3)
    direction[2] = abs(direction[2]) + 0.5
    direction /= np.linalg.norm(direction)
    tangent = np.cross(direction, rng.normal(size=3))
    tangent /= np.linalg.norm(tangent)
    angles = np.linspace(0, rng.uniform(0.4, 0.8), 24)
    wobble = 0.08 * np.sin(angles * rng.uniform(4, 9) + rng.uniform(0, 2 * np.pi))
    binormal = np.cross(direction, tangent)
    rays = (np.cos(angles)[:, None] * direction + np.sin(angles)[:, None] * tangent
            + wobble[:, None] * binormal)
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    radii = np.arange(0.0, 130.0, grid.voxel_mm[0] / 2)
    points = HEAD_CENTER + rays[:, None, :] * radii[None, :, None]
    to_voxel = np.linalg.inv(grid.affine)
    coords = (points.reshape(-1, 3) @ to_voxel[:3, :3].T + to_voxel[:3, 3]).T
    inside = ndimage.map_coordinates(brain.astype(np.float32), coords, order=0, mode="constant",
                                     cval=0.0).reshape(len(rays), len(radii)) > 0.5
    last_inside = len(radii) - 1 - np.argmax(inside[:, ::-1], axis=1)
    keep = inside.any(axis=1)
    return HEAD_CENTER + rays[keep] * (radii[last_inside[keep]] + 1.0)[:, None]


def build_anatomy(subject_seed: int, n_tumors: int, settings: PhantomSettings) -> Anatomy:
    """One subject's head in the head frame: labels, parameter maps and ground-truth regions.

    Args:
        subject_seed: the subject's seed (determines everything).
        n_tumors: number of tumors to place.
        settings: phantom settings.

    Returns:
        The anatomy.
    """
    grid = anatomy_grid(settings)
    fractions = _deformed_tissue_fractions(_stream(subject_seed, "deformation"), grid, settings)
    labels = _base_labels(fractions, settings.voxel_mm)
    brain = fractions["brain"] >= 0.5
    tumors = _place_tumors(_stream(subject_seed, "tumors"), labels, brain, n_tumors,
                           settings.voxel_mm)
    _paint_vessels(_stream(subject_seed, "vessels"), labels, brain, grid)
    tissues = tissue_parameters(_stream(subject_seed, "tissue"))
    maps = {}
    for name in PARAMETER_NAMES:
        lookup = np.array([getattr(tissues[label], name) for label in LABELS], dtype=np.float32)
        maps[name] = lookup[labels]
    rim = labels == LABEL["rim"]
    # The true brain mask is what brain extraction outlines: everything inside the inner skull
    # surface, i.e. the brain with the thin CSF layer around it (BET and deepbet both put the edge
    # there; the skull, scalp fat and background are outside).
    intracranial = ~np.isin(labels, [LABEL["background"], LABEL["skull"], LABEL["fat"]])
    indicators = {"brain": intracranial, "enhancing": rim,
                  "tumor": rim | (labels == LABEL["core"])}
    indicators = {name: mask.astype(np.float32) for name, mask in indicators.items()}
    return Anatomy(grid, labels, maps, indicators, tissues, tumors)


def _stream(subject_seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([int(subject_seed), _STREAM[purpose]])


# ----------------------------------------------------------------------------- acquisition


def bias_field(rng: np.random.Generator, shape: tuple[int, ...], amplitude: float) -> np.ndarray:
    """Smooth multiplicative field exp(amplitude * f), f a random quadratic with max |f| = 1.

    Args:
        rng: random generator.
        shape: grid shape (the field is fixed in scanner space).
        amplitude: log-amplitude; 0.15 gives about +-15 %.

    Returns:
        Float32 field.
    """
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = [x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]
    coefficients = rng.normal(size=len(terms))
    field_ = sum(c * t for c, t in zip(coefficients, terms, strict=True))
    field_ = np.broadcast_to(field_, shape)
    field_ = field_ / max(float(np.abs(field_).max()), 1e-12)
    return np.exp(amplitude * field_).astype(np.float32)


@dataclass
class SubjectScans:
    """The simulated scans of one subject and their ground truth (all on the scans' grids)."""

    grids: dict[str, Grid]
    poses: dict[str, np.ndarray]
    images: dict[str, np.ndarray]
    true_adc: np.ndarray
    masks: dict[str, np.ndarray]
    anatomy: Anatomy


def simulate_subject(subject_seed: int, n_tumors: int, settings: PhantomSettings) -> SubjectScans:
    """Build the anatomy and acquire T1w, CE-T1, T2w and DWI with bias field and Rician noise.

    Args:
        subject_seed: the subject's seed.
        n_tumors: number of tumors.
        settings: phantom settings.

    Returns:
        The scans (float32) and ground truth; masks are on the CE-T1 grid.
    """
    anatomy = build_anatomy(subject_seed, n_tumors, settings)
    grids = acquisition_grids(settings)
    poses = head_poses(_stream(subject_seed, "poses"), settings)
    bias_rng = _stream(subject_seed, "bias")
    noise_rng = _stream(subject_seed, "noise")
    sigma = WM_SCANNER_SIGNAL / settings.snr
    images: dict[str, np.ndarray] = {}
    true_adc = np.zeros(0)
    for modality in MODALITIES:
        names = ("pd", "t1_ms", "t2_ms") + {"ceT1w": ("agent_mM",),
                                             "dwi": ("adc_mm2_s",)}.get(modality, ())
        maps = sample_parameter_maps(anatomy, grids[modality], poses[modality], names)
        clean = noise_free_image(modality, maps)
        field_ = bias_field(bias_rng, grids[modality].shape, settings.bias_field)
        if clean.ndim == 4:
            field_ = field_[..., None]
        images[modality] = add_rician_noise(clean * field_, sigma, noise_rng)
        if modality == "dwi":
            true_adc = maps["adc_mm2_s"].astype(np.float32)
    masks = sample_indicators(anatomy, grids[REFERENCE_MODALITY], poses[REFERENCE_MODALITY])
    return SubjectScans(grids, poses, images, true_adc, masks, anatomy)


# ----------------------------------------------------------------------------- BIDS dataset


def plan_cohort(n_subjects: int, seed: int = 0, n_set_b: int = 0, *,
                max_tumors: int = PhantomSettings.max_tumors) -> pd.DataFrame:
    """Subjects of the cohort, cheaply (no images): identifiers, sets, tumor counts, seeds.

    sub-01 has no tumor and sub-02 at least one (unless Set B rules say otherwise: every Set B
    subject, the last ``n_set_b``, has at least one).

    Args:
        n_subjects: number of subjects (>= 1).
        seed: cohort seed.
        n_set_b: how many of the last subjects form Set B (with tumor masks).
        max_tumors: most tumors per subject.

    Returns:
        Columns participant_id, set, n_tumors, subject_seed.
    """
    if n_subjects < 1 or not 0 <= n_set_b <= n_subjects:
        raise ValueError(f"need n_subjects >= 1 and 0 <= n_set_b <= n_subjects, "
                         f"got {n_subjects}, {n_set_b}")
    if n_set_b and max_tumors < 1:
        raise ValueError("Set B subjects need tumors, but max_tumors is 0")
    width = max(2, len(str(n_subjects)))
    rows = []
    for index in range(n_subjects):
        rng = np.random.default_rng([int(seed), index])
        subject_seed = int(rng.integers(0, 2**31 - 1))
        in_set_b = index >= n_subjects - n_set_b
        fewest = 1 if (in_set_b or index == 1) and max_tumors >= 1 else 0
        n_tumors = 0 if index == 0 and not in_set_b else int(rng.integers(fewest, max_tumors + 1))
        rows.append({"participant_id": f"sub-{index + 1:0{width}d}",
                     "set": "B" if in_set_b else "A", "n_tumors": n_tumors,
                     "subject_seed": subject_seed})
    return pd.DataFrame(rows, columns=["participant_id", "set", "n_tumors", "subject_seed"])


def guard_demo_target(bids_dir: str | Path) -> None:
    """Refuse to write the phantom into a folder that holds some other dataset.

    Allowed: a missing or empty folder, or an earlier cesynth phantom dataset (its
    dataset_description.json names ``cesynth phantom`` in GeneratedBy).

    Args:
        bids_dir: the target dataset root.

    Raises:
        InputError: the folder holds a dataset that is not a cesynth phantom.
    """
    root = Path(bids_dir)
    description_path = root / "dataset_description.json"
    if description_path.is_file():
        try:
            description = json.loads(description_path.read_text())
        except (OSError, json.JSONDecodeError):
            description = {}
        generators = description.get("GeneratedBy", []) if isinstance(description, dict) else []
        names = {g.get("Name") for g in generators if isinstance(g, dict)}
        if "cesynth phantom" not in names:
            raise InputError(root, "holds a dataset that is not a cesynth phantom; refusing to "
                                   "write the demo cohort over it")
    elif root.is_dir() and any(root.glob("sub-*")):
        raise InputError(root, "holds subject folders but no cesynth phantom "
                               "dataset_description.json; refusing to write over them")


def _generated_by() -> list[dict[str, str]]:
    return [{"Name": "cesynth phantom", "Version": __version__,
             "Description": "physics-based synthetic brain-tumor phantom (not acquired data)"}]


def write_dataset_files(bids_dir: str | Path, plan: pd.DataFrame,
                        settings: PhantomSettings = PhantomSettings()) -> None:
    """Dataset-level files: descriptions (raw and derivatives), participants table and README.

    Args:
        bids_dir: dataset root.
        plan: from :func:`plan_cohort`.
        settings: phantom settings (recorded in the phantom derivative's description).
    """
    root = Path(bids_dir)
    write_json({"Name": "cesynth synthetic brain-tumor phantom cohort", "BIDSVersion": "1.9.0",
                "DatasetType": "raw", "License": "CC0", "GeneratedBy": _generated_by()},
               root / "dataset_description.json")
    write_tsv(plan[["participant_id", "set"]], root / "participants.tsv")
    write_json({"participant_id": {"Description": "subject identifier"},
                "set": {"Description": "evaluation set of the subject",
                        "Levels": {"A": "brain-region evaluation only",
                                   "B": "has an expert-style tumor mask "
                                        "(derivatives/tumor_masks)"}}},
               root / "participants.json")
    _write_text(_readme(plan), root / "README")
    derivative = {"BIDSVersion": "1.9.0", "DatasetType": "derivative",
                  "GeneratedBy": _generated_by()}
    write_json({**derivative, "Name": "cesynth phantom ground truth",
                "PhantomSettings": asdict(settings)},
               root / "derivatives" / "phantom" / "dataset_description.json")
    if (plan["set"] == "B").any():
        write_json({**derivative, "Name": "tumor masks (enhancing rim + necrotic core)"},
                   root / "derivatives" / "tumor_masks" / "dataset_description.json")


def _readme(plan: pd.DataFrame) -> str:
    counts = ", ".join(f"{row.participant_id}: {row.n_tumors} tumor(s), set {row.set}"
                       for row in plan.itertuples())
    return (
        "cesynth synthetic phantom cohort\n\n"
        "SYNTHETIC data, not acquired from any person. Heads built from the MNI ICBM152 2009a "
        "tissue maps with a random smooth deformation, skull and scalp; tumors with necrotic "
        "core, enhancing rim and edema; enhancing vessels. Images follow the SPGR (T1w, "
        "ce-gadolinium T1w), spin-echo (T2w) and diffusion (DWI, b = 0, 500, 1000) signal "
        "equations, each scan with its own grid, head pose, bias field and Rician noise.\n\n"
        f"Subjects: {counts}.\n"
        "Ground truth (true ADC, brain and enhancing masks, transforms) is in "
        "derivatives/phantom; Set B tumor masks in derivatives/tumor_masks.\n")


def _write_text(text: str, path: Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def _sidecar(modality: str, grid: Grid) -> dict[str, Any]:
    """BIDS sidecar with the acquisition parameters actually used (times in seconds)."""
    common = {"Modality": "MR", "MagneticFieldStrength": 3, "Manufacturer": "cesynth",
              "ManufacturersModelName": "cesynth synthetic phantom",
              "CesynthSyntheticPhantom": True,
              "SliceThickness": float(grid.voxel_mm[2])}
    if modality in ("T1w", "ceT1w"):
        sidecar = {**common, "ScanningSequence": "GR", "SequenceVariant": "SP",
                   "MRAcquisitionType": "3D", "RepetitionTime": SPGR["tr_ms"] / 1000,
                   "EchoTime": SPGR["te_ms"] / 1000, "FlipAngle": SPGR["flip_deg"]}
        if modality == "ceT1w":
            sidecar.update(ContrastBolusIngredient="GADOLINIUM",
                           ContrastAgentRelaxivity_per_mM_s=GADOLINIUM_R1_PER_MM_S)
        return sidecar
    acquisition = T2_SE if modality == "T2w" else DWI_SE
    sidecar = {**common, "ScanningSequence": "SE" if modality == "T2w" else "EP",
               "MRAcquisitionType": "2D", "RepetitionTime": acquisition["tr_ms"] / 1000,
               "EchoTime": acquisition["te_ms"] / 1000, "FlipAngle": 90}
    return sidecar


def subject_paths(bids_dir: str | Path, participant_id: str) -> dict[str, Path]:
    """Every path :func:`write_subject` writes for a subject (Set B tumor mask included).

    Args:
        bids_dir: dataset root.
        participant_id: e.g. ``sub-01``.

    Returns:
        Key -> path.
    """
    root = Path(bids_dir)
    sub = participant_id
    anat, dwi = root / sub / "anat", root / sub / "dwi"
    truth = root / "derivatives" / "phantom" / sub
    return {
        "T1w": anat / f"{sub}_T1w.nii.gz", "T1w_json": anat / f"{sub}_T1w.json",
        "ceT1w": anat / f"{sub}_ce-gadolinium_T1w.nii.gz",
        "ceT1w_json": anat / f"{sub}_ce-gadolinium_T1w.json",
        "T2w": anat / f"{sub}_T2w.nii.gz", "T2w_json": anat / f"{sub}_T2w.json",
        "dwi": dwi / f"{sub}_dwi.nii.gz", "dwi_json": dwi / f"{sub}_dwi.json",
        "bval": dwi / f"{sub}_dwi.bval", "bvec": dwi / f"{sub}_dwi.bvec",
        "true_adc": truth / f"{sub}_desc-trueadc_adc.nii.gz",
        "brain_mask": truth / f"{sub}_space-ceT1w_desc-brain_mask.nii.gz",
        "enhancing_mask": truth / f"{sub}_space-ceT1w_desc-enhancing_mask.nii.gz",
        "transforms": truth / f"{sub}_desc-transforms.json",
        "parameters": truth / f"{sub}_desc-phantom_parameters.json",
        "tumor_mask": (root / "derivatives" / "tumor_masks" / sub / "anat"
                       / f"{sub}_desc-tumor_mask.nii.gz"),
    }


def write_subject(bids_dir: str | Path, plan_row: Mapping[str, Any],
                  settings: PhantomSettings = PhantomSettings()) -> dict[str, Path]:
    """Simulate one subject and write its images, sidecars and ground truth.

    Args:
        bids_dir: dataset root.
        plan_row: one row of :func:`plan_cohort` (participant_id, set, n_tumors, subject_seed).
        settings: phantom settings.

    Returns:
        Key -> path of every file written.
    """
    sub = str(plan_row["participant_id"])
    scans = simulate_subject(int(plan_row["subject_seed"]), int(plan_row["n_tumors"]), settings)
    paths = subject_paths(bids_dir, sub)
    if plan_row["set"] != "B":
        del paths["tumor_mask"]
    for modality in MODALITIES:
        save_nifti(scans.images[modality], scans.grids[modality].affine, paths[modality],
                   synthetic=True)
        write_json(_sidecar(modality, scans.grids[modality]), paths[f"{modality}_json"])
    _write_text(" ".join(f"{b:g}" for b in B_VALUES) + "\n", paths["bval"])
    _write_text("".join(" ".join(str(v[axis]) for v in B_VECTORS) + "\n" for axis in range(3)),
                paths["bvec"])
    reference = scans.grids[REFERENCE_MODALITY].affine
    save_nifti(scans.true_adc, scans.grids["dwi"].affine, paths["true_adc"])
    save_nifti(scans.masks["brain"], reference, paths["brain_mask"], dtype=np.uint8)
    save_nifti(scans.masks["enhancing"], reference, paths["enhancing_mask"], dtype=np.uint8)
    if "tumor_mask" in paths:
        save_nifti(scans.masks["tumor"], reference, paths["tumor_mask"], dtype=np.uint8)
    write_json(true_transforms(scans.poses), paths["transforms"])
    write_json({"subject_seed": int(plan_row["subject_seed"]),
                "n_tumors_requested": int(plan_row["n_tumors"]),
                "tumors": scans.anatomy.tumors,
                "tissues": {name: asdict(t) for name, t in scans.anatomy.tissues.items()},
                "units": {"t1_ms": "ms", "t2_ms": "ms", "adc_mm2_s": "mm2/s", "agent_mM": "mM"},
                "settings": asdict(settings)}, paths["parameters"])
    return paths


def make_cohort(out_dir: str | Path, n_subjects: int, seed: int = 0, n_set_b: int | None = None,
                settings: PhantomSettings = PhantomSettings()) -> pd.DataFrame:
    """Write a whole phantom cohort as a BIDS dataset.

    Args:
        out_dir: dataset root.
        n_subjects: number of subjects.
        seed: cohort seed.
        n_set_b: Set B size; default max(1, round(0.25 n)) for n >= 2, else 0.
        settings: phantom settings.

    Returns:
        The cohort plan (see :func:`plan_cohort`).
    """
    if n_set_b is None:
        n_set_b = max(1, round(0.25 * n_subjects)) if n_subjects >= 2 else 0
    plan = plan_cohort(n_subjects, seed, n_set_b, max_tumors=settings.max_tumors)
    write_dataset_files(out_dir, plan, settings)
    for _, row in plan.iterrows():
        write_subject(out_dir, row, settings)
    return plan
