"""Scan grids, rigid head poses, the true transforms between scans, and sampling onto grids.

Coordinates. The "head frame" is the MNI-like world space of the anatomy grid. A scan of
modality m with voxel-to-world affine A_m (its NIfTI affine, the nominal scanner affine) shows at
world point x the head at point P_m @ x, where P_m is the scan's rigid head pose. A point y of the
CE-T1 world therefore corresponds to the point inv(P_m) @ P_ce @ y of m's world: that matrix is
saved as ``ceT1w_to_<m>`` (what a registration with fixed = CE-T1 and moving = m estimates).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from cesynth.phantom.settings import PhantomSettings

MODALITIES = ("T1w", "ceT1w", "T2w", "dwi")
MOVING_MODALITIES = ("T1w", "T2w", "dwi")
FLAIR = "FLAIR"
"""The optional scan (written only when asked): its grid is in :func:`acquisition_grids`, its
pose is drawn from a random stream of its own (:func:`random_pose`), so the other scans stay
what they are without it."""
REFERENCE_MODALITY = "ceT1w"

# Brain-mask bounding box of the 1 mm ICBM152 mask (world mm), so grids need no template load.
_BRAIN_BOX_MIN = np.array([-72.0, -107.0, -72.0])
_BRAIN_BOX_MAX = np.array([72.0, 73.0, 82.0])
HEAD_CENTER = (_BRAIN_BOX_MIN + _BRAIN_BOX_MAX) / 2
# Nominal thickness (mm) of the shells outside the brain; each is at least one voxel.
LAYERS_MM = {"csf": 3.0, "skull": 6.0, "fat": 6.0}


@dataclass(frozen=True)
class Grid:
    """A voxel grid: array shape and voxel-to-world (RAS mm) affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def voxel_mm(self) -> np.ndarray:
        """Voxel edge lengths (mm) along the three array axes."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)


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
        Modality -> grid. T1w and ceT1w are isotropic at voxel_mm; T2w, FLAIR (on the T2w's
        voxels, its own field of view) and dwi thick axial slices.
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
        FLAIR: _centered_grid(HEAD_CENTER + [1.0, -3.0, 2.0], square + [2.0, 6.0, 0.0], t2_voxel),
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
    return {modality: random_pose(rng, settings) for modality in MODALITIES}


def random_pose(rng: np.random.Generator, settings: PhantomSettings) -> np.ndarray:
    """One random rigid head pose within the settings' rotation and translation limits.

    Args:
        rng: random generator (three rotation draws, then three translation draws).
        settings: limits of rotation (each axis) and translation (each axis).

    Returns:
        The 4x4 pose matrix.
    """
    rotation = rng.uniform(-settings.max_rotation_deg, settings.max_rotation_deg, 3)
    translation = rng.uniform(-settings.max_translation_mm, settings.max_translation_mm, 3)
    return rigid_matrix(rotation, translation)


def true_transforms(poses: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """World-to-world transforms between the CE-T1 and each moving scan, with their convention.

    Args:
        poses: modality -> head pose (from :func:`head_poses`, with ``FLAIR`` when it is written).

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
    for modality in [*MOVING_MODALITIES, *([FLAIR] if FLAIR in poses else [])]:
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

