"""One subject's head: MNI-based tissue maps, smooth deformation, shells, tumors and vessels.

Each head is built from the MNI ICBM152 2009a tissue maps that nilearn ships (grey and white
matter probabilities, brain mask), warped by a smooth random deformation and wrapped in a CSF
layer, a skull shell and a scalp-fat shell. Tumors (necrotic core, enhancing rim, surrounding
edema) and enhancing vessels are painted in. The parameter maps and ground-truth regions are then
resampled onto a scan's grid (maps, not signals, so the noise-free DWI gives back the true ADC).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from cesynth.phantom.grids import (
    HEAD_CENTER,
    Grid,
    _layer_thickness_mm,
    anatomy_grid,
    rigid_matrix,
    sample_on_grid,
)
from cesynth.phantom.physics import _BACKGROUND, TissueParams, tissue_parameters
from cesynth.phantom.settings import PhantomSettings

# Tissue labels of the anatomy grid.
LABELS = ("background", "csf", "gm", "wm", "edema", "rim", "core", "vessel", "fat", "skull")
LABEL = {name: index for index, name in enumerate(LABELS)}
# The parameter maps of an anatomy (the fields of TissueParams).
PARAMETER_NAMES = ("pd", "t1_ms", "t2_ms", "adc_mm2_s", "agent_mM")
# Below this the resampled agent is numerical dust, not enhancement.
_AGENT_FLOOR_MM = 1e-6

# Independent random streams of one subject, so changing one part never shifts another.
_STREAM = {"tissue": 1, "deformation": 2, "tumors": 3, "vessels": 4, "poses": 5,
           "bias": 6, "noise": 7}


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

