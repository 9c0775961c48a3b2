"""One subject's head: MNI-based tissue maps, smooth deformation, shells, lesions and vessels.

Each head is built from the MNI ICBM152 2009a tissue maps that nilearn ships (grey and white
matter probabilities, brain mask), warped by a smooth random deformation and wrapped in a CSF
layer, a skull shell and a scalp-fat shell. Lesions of four archetypes (:data:`LESION_TYPES`:
rim-enhancing with necrotic core and edema, solid enhancing with a thin edema, non-enhancing
low-grade-glioma-like, non-enhancing T2 abnormality) and enhancing vessels are painted in. The
parameter maps and ground-truth regions are then resampled onto a scan's grid (maps, not signals,
so the noise-free DWI gives back the true ADC).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
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

# Tissue labels of the anatomy grid (lesion archetypes' tissues appended: older indices hold).
LABELS = ("background", "csf", "gm", "wm", "edema", "rim", "core", "vessel", "fat", "skull",
          "solid", "lgg", "gliosis")
LABEL = {name: index for index, name in enumerate(LABELS)}
# The lesion archetypes: rim-enhancing (rim, necrotic core, edema), solid enhancing
# (metastasis-like, 3-30 mm, thin edema), non-enhancing (low-grade-glioma-like, ``lgg``) and a
# T2 abnormality without enhancement (treatment effect, ``gliosis``).
LESION_TYPES = ("rim", "solid", "nonenhancing", "t2abnormality")
ENHANCING_TYPES = ("rim", "solid")
# BraTS-2018 labels (real cohorts' expert labels mean the same) -> the tissues they cover.
BRATS_CLASSES = {4: ("rim", "solid"), 1: ("core", "lgg"), 2: ("edema", "gliosis")}
# Indicator (Anatomy.indicators) of each BraTS class.
_BRATS_INDICATOR = {4: "enhancing", 1: "nonenhancing", 2: "edema"}
# The lesion proper of each archetype (its edema excluded) and that part's BraTS class.
_LESION_PROPER = {"rim": (("rim", "core"), 4), "solid": (("solid",), 4),
                  "nonenhancing": (("lgg",), 1), "t2abnormality": (("gliosis",), 2)}
_LESION_TISSUES = tuple(tissue for tissues in BRATS_CLASSES.values() for tissue in tissues)
# The parameter maps of an anatomy (the fields of TissueParams).
PARAMETER_NAMES = ("pd", "t1_ms", "t2_ms", "adc_mm2_s", "agent_mM")
# Below this the resampled agent is numerical dust, not enhancement.
_AGENT_FLOOR_MM = 1e-6

# Independent random streams of one subject, so changing one part never shifts another.
_STREAM = {"tissue": 1, "deformation": 2, "tumors": 3, "vessels": 4, "poses": 5,
           "bias": 6, "noise": 7, "flair": 8}


@dataclass
class Anatomy:
    """One subject's head on the anatomy grid (head frame).

    ``maps`` holds the parameter maps (PD, T1, T2, ADC, agent; float32) and ``indicators`` the
    ground-truth regions as 0/1 float32 maps, both ready to be resampled onto a scan's grid:
    ``brain``, ``enhancing`` (rim + solid: BraTS 4), ``nonenhancing`` (necrotic core + lgg:
    BraTS 1), ``edema`` (edema + gliosis: BraTS 2) and ``tumor`` (enhancing + nonenhancing).
    ``tumors`` holds one record per placed lesion (``type``, centre, sizes) and ``lesion_ids``
    where each lies (lesion ``i`` of ``tumors`` = ``i + 1`` over its whole extent, edema
    included; uint16).
    """

    grid: Grid
    labels: np.ndarray
    maps: dict[str, np.ndarray]
    indicators: dict[str, np.ndarray]
    tissues: dict[str, TissueParams]
    tumors: list[dict[str, Any]] = field(default_factory=list)
    lesion_ids: np.ndarray | None = None


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


def sample_indicators(anatomy: Anatomy, grid: Grid, pose: np.ndarray,
                      names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Ground-truth masks (brain, enhancing, ...) on a scan grid: resampled fraction >= 0.5.

    Args:
        anatomy: the subject.
        grid: scan grid.
        pose: the scan's head pose.
        names: which indicators (default all of ``anatomy.indicators``).

    Returns:
        Name -> uint8 mask on ``grid``.
    """
    names = list(anatomy.indicators) if names is None else list(names)
    fractions = sample_on_grid({n: anatomy.indicators[n] for n in names}, anatomy.grid, grid,
                               pose)
    return {name: (fraction >= 0.5).astype(np.uint8) for name, fraction in fractions.items()}


def sample_lesion_truth(anatomy: Anatomy, grid: Grid,
                        pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lesions on a scan grid: BraTS-2018 classes and one label per lesion.

    Each class (4 enhancing: rim, solid; 1 non-enhancing: necrotic core, lgg; 2 edema or T2
    abnormality: edema, gliosis) is its indicator's resampled fraction >= 0.5, 4 before 1 before
    2 where they collide. Lesion ``i`` (1-based, order of ``anatomy.tumors``) covers the voxels
    where its whole extent's fraction is >= 0.5, and the class voxels it contributes most to. A
    lesion smaller than the scan's voxel that would otherwise miss its class keeps the voxel
    where its lesion proper has the largest fraction, with that part's class, so every placed
    lesion is in the truth.

    Args:
        anatomy: the subject.
        grid: scan grid.
        pose: the scan's head pose.

    Returns:
        ``(dseg, instances)``: uint8 BraTS labels and uint16 lesion labels on ``grid``.
    """
    fractions = sample_on_grid({str(label): anatomy.indicators[name]
                                for label, name in _BRATS_INDICATOR.items()},
                               anatomy.grid, grid, pose)
    dseg = np.zeros(grid.shape, np.uint8)
    for label in (2, 1, 4):  # later wins: 4 > 1 > 2
        dseg[fractions[str(label)] >= 0.5] = label
    instances = np.zeros(grid.shape, np.uint16)
    if not anatomy.tumors or anatomy.lesion_ids is None:
        return dseg, instances
    numbers = range(1, len(anatomy.tumors) + 1)
    extents = sample_on_grid({str(i): (anatomy.lesion_ids == i).astype(np.float32)
                              for i in numbers}, anatomy.grid, grid, pose)
    stacked = np.stack([extents[str(i)] for i in numbers])
    best = stacked.argmax(axis=0)
    largest = stacked.max(axis=0)
    owned = (largest >= 0.5) | ((dseg > 0) & (largest > 0))
    instances[owned] = best[owned] + 1
    for index, tumor in zip(numbers, anatomy.tumors, strict=True):
        tissues, label = _LESION_PROPER[tumor["type"]]
        if np.any(dseg[instances == index] == label):
            continue
        proper = (anatomy.lesion_ids == index) & np.isin(anatomy.labels,
                                                          [LABEL[t] for t in tissues])
        fraction = sample_on_grid({"proper": proper.astype(np.float32)}, anatomy.grid, grid,
                                  pose)["proper"]
        voxel = np.unravel_index(int(fraction.argmax()), grid.shape)
        if fraction[voxel] > 0:
            instances[voxel] = index
            dseg[voxel] = label
    return dseg, instances



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


def lesion_types_of(lesions: Sequence[str] | str | int | None) -> list[str]:
    """A subject's lesion types from a list, a ``;``-joined string (the cohort plan's
    ``lesion_types``) or a count (that many rim-enhancing lesions, the phantom's earlier tumors).

    Raises:
        ValueError: an unknown type.
    """
    if lesions is None or (isinstance(lesions, float) and math.isnan(lesions)):
        return []  # an empty plan cell read back from a table
    if isinstance(lesions, (int, np.integer)):
        return ["rim"] * int(lesions)
    if isinstance(lesions, str):
        lesions = [part for part in lesions.split(";") if part.strip()]
    types = [str(kind).strip() for kind in lesions]
    unknown = sorted(set(types) - set(LESION_TYPES))
    if unknown:
        raise ValueError(f"unknown lesion type(s) {', '.join(unknown)} "
                         f"(expected {', '.join(LESION_TYPES)})")
    return types


def lesion_specs(rng: np.random.Generator, lesion_types: Sequence[str],
                 voxel_mm: float) -> list[dict[str, Any]]:
    """Type and sizes of each lesion, all drawn before any is placed (so cheap to know ahead).

    Radii are of the lesion proper (``radius_mm``) and of its whole extent (``extent_radius_mm``,
    edema included), before the irregular shape; ``diameter_mm`` is twice ``radius_mm``. Rim:
    8-14 mm rim radius, necrotic core at 0.4-0.6 of it, edema to 1.6-2.2 times it (as the
    phantom's tumors always were). Solid: 3-30 mm diameter, log-uniform (about half below
    10 mm), edema 1.5-4 mm thick. Non-enhancing (lgg): 10-30 mm radius. T2 abnormality
    (gliosis): 8-20 mm radius. The last two have no edema (``edema_radius_mm`` None).

    Args:
        rng: the subject's lesion stream.
        lesion_types: one of :data:`LESION_TYPES` per lesion.
        voxel_mm: anatomy voxel size (a rim keeps a core and a rim of at least a voxel).

    Returns:
        One dict per lesion, in order.
    """
    specs = []
    for kind in lesion_types:
        if kind == "rim":
            rim_radius = max(float(rng.uniform(8.0, 14.0)), 2.5 * voxel_mm)
            core_fraction = min(float(rng.uniform(0.4, 0.6)), 1 - 1.2 * voxel_mm / rim_radius)
            edema_radius = rim_radius * float(rng.uniform(1.6, 2.2))
            spec = {"radius_mm": rim_radius, "rim_radius_mm": rim_radius,
                    "core_fraction": core_fraction, "edema_radius_mm": edema_radius,
                    "min_depth_mm": rim_radius + 6.0}
        elif kind == "solid":
            radius = float(np.exp(rng.uniform(np.log(3.0), np.log(30.0)))) / 2
            edema_radius = radius + float(rng.uniform(1.5, 4.0))
            spec = {"radius_mm": radius, "edema_radius_mm": edema_radius,
                    "min_depth_mm": radius + 3.0}
        elif kind in ("nonenhancing", "t2abnormality"):
            radius = float(rng.uniform(*((10.0, 30.0) if kind == "nonenhancing"
                                         else (8.0, 20.0))))
            spec = {"radius_mm": radius, "edema_radius_mm": None,
                    "min_depth_mm": 0.5 * radius + 4.0}
        else:
            raise ValueError(f"unknown lesion type {kind!r}")
        spec["extent_radius_mm"] = spec["edema_radius_mm"] or spec["radius_mm"]
        specs.append({"type": kind, "diameter_mm": 2 * spec["radius_mm"], **spec})
    return specs


def planned_lesions(subject_seed: int, lesion_types: Sequence[str] | str | int,
                    voxel_mm: float) -> list[dict[str, Any]]:
    """The lesions :func:`build_anatomy` will try to place for a subject (types and sizes, no
    image work): :func:`lesion_specs` on the subject's lesion stream.

    Args:
        subject_seed: the subject's seed.
        lesion_types: as for :func:`build_anatomy`.
        voxel_mm: anatomy voxel size.

    Returns:
        One dict per lesion, in order.
    """
    return lesion_specs(_stream(subject_seed, "tumors"), lesion_types_of(lesion_types), voxel_mm)


# Shape of each archetype: (lesion irregularity, edema irregularity, local box reach / extent).
# The rim keeps the phantom's original shape; a solid lesion is rounder; lgg and gliosis are the
# most irregular (their box reaches further so they are not cut flat).
_SHAPE = {"rim": (0.25, 0.3, 1.4), "solid": (0.1, 0.3, 1.8), "nonenhancing": (0.35, 0.3, 1.9),
          "t2abnormality": (0.35, 0.3, 1.9)}


def _place_tumors(rng: np.random.Generator, labels: np.ndarray, brain: np.ndarray,
                  lesion_types: Sequence[str], grid: Grid
                  ) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Paint the lesions into ``labels`` (in place), each only where no earlier one lies.

    Returns:
        The records of the placed lesions and their extents (lesion ``i`` = ``i + 1``, uint16).
        A lesion without room (no centre deep and far enough from the others) is left out.
    """
    voxel_mm = float(grid.voxel_mm[0])
    depth_mm = ndimage.distance_transform_edt(brain, sampling=voxel_mm)
    parenchyma = np.isin(labels, [LABEL["gm"], LABEL["wm"]])
    lesion_ids = np.zeros(labels.shape, np.uint16)
    tumors: list[dict[str, Any]] = []
    for spec in lesion_specs(rng, lesion_types, voxel_mm):
        candidates = parenchyma & (depth_mm >= spec["min_depth_mm"]) & (lesion_ids == 0)
        center = _tumor_center(rng, candidates, tumors, spec, voxel_mm)
        if center is None:
            continue
        lesion_noise, edema_noise, reach = _SHAPE[spec["type"]]
        lesion_q, edema_q, box = _tumor_shape(rng, center, spec["radius_mm"],
                                              spec["extent_radius_mm"], labels.shape, voxel_mm,
                                              lesion_noise, edema_noise, reach)
        local = labels[box]
        free = lesion_ids[box] == 0
        in_brain, in_tissue = brain[box] & free, parenchyma[box] & free
        kind = spec["type"]
        if kind in ("rim", "solid"):
            edema = (edema_q < 1) & in_tissue
            lesion = (lesion_q < 1) & in_brain
            local[edema] = LABEL["edema"]
            local[lesion] = LABEL[kind]
            if kind == "rim":
                local[(lesion_q < spec["core_fraction"]) & in_brain] = LABEL["core"]
            extent = edema | lesion
        else:
            extent = (lesion_q < 1) & in_tissue
            local[extent] = LABEL["lgg" if kind == "nonenhancing" else "gliosis"]
        lesion_ids[box][extent] = len(tumors) + 1
        center_mm = grid.affine[:3, :3] @ center + grid.affine[:3, 3]
        record = {key: value for key, value in spec.items() if key != "min_depth_mm"}
        tumors.append({**record, "center_voxel": center.tolist(),
                       "center_mm": [round(float(v), 2) for v in center_mm],
                       "enhancing": kind in ENHANCING_TYPES,
                       "anatomy_voxels": int(extent.sum())})
    return tumors, lesion_ids


def _tumor_center(rng: np.random.Generator, candidates: np.ndarray,
                  tumors: list[dict[str, Any]], spec: Mapping[str, Any],
                  voxel_mm: float) -> np.ndarray | None:
    """A random candidate voxel whose lesion proper stays clear of every placed lesion's extent
    and whose extent stays clear of every placed lesion proper (nominal radii)."""
    points = np.argwhere(candidates)
    for tumor in tumors:
        gap_mm = max(tumor["extent_radius_mm"] + spec["radius_mm"],
                     tumor["radius_mm"] + spec["extent_radius_mm"])
        points = points[np.linalg.norm(points - tumor["center_voxel"], axis=1)
                        > gap_mm / voxel_mm]
    if len(points) == 0:
        return None
    return points[rng.integers(len(points))]


def _tumor_shape(rng: np.random.Generator, center: np.ndarray, rim_radius: float,
                 edema_radius: float, shape: tuple[int, ...], voxel_mm: float,
                 lesion_noise_amplitude: float = 0.25, edema_noise_amplitude: float = 0.3,
                 reach_factor: float = 1.4
                 ) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...]]:
    """Normalised radii (1 = boundary) of an irregular lesion and its edema, in a local box."""
    reach = math.ceil(reach_factor * edema_radius / voxel_mm)
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
    lesion_q = radius_mm / rim_radius * (1 + lesion_noise_amplitude * lesion_noise)
    edema_q = radius_mm / edema_radius * (1 + edema_noise_amplitude * edema_noise)
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
        # Vessels pass by the lesions (their extents stay what was placed).
        keep = [LABEL[name] for name in ("background", *_LESION_TISSUES)]
        labels[tube & ~np.isin(labels, keep)] = LABEL["vessel"]


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


def build_anatomy(subject_seed: int, lesion_types: Sequence[str] | str | int,
                  settings: PhantomSettings) -> Anatomy:
    """One subject's head in the head frame: labels, parameter maps and ground-truth regions.

    Args:
        subject_seed: the subject's seed (determines everything).
        lesion_types: one of :data:`LESION_TYPES` per lesion, in placement order (a list or a
            ``;``-joined string); a count places that many rim-enhancing lesions.
        settings: phantom settings.

    Returns:
        The anatomy.
    """
    grid = anatomy_grid(settings)
    fractions = _deformed_tissue_fractions(_stream(subject_seed, "deformation"), grid, settings)
    labels = _base_labels(fractions, settings.voxel_mm)
    brain = fractions["brain"] >= 0.5
    tumors, lesion_ids = _place_tumors(_stream(subject_seed, "tumors"), labels, brain,
                                       lesion_types_of(lesion_types), grid)
    _paint_vessels(_stream(subject_seed, "vessels"), labels, brain, grid)
    tissues = tissue_parameters(_stream(subject_seed, "tissue"))
    maps = {}
    for name in PARAMETER_NAMES:
        lookup = np.array([getattr(tissues[label], name) for label in LABELS], dtype=np.float32)
        maps[name] = lookup[labels]
    classes = {label: np.isin(labels, [LABEL[t] for t in tissues_])
               for label, tissues_ in BRATS_CLASSES.items()}
    # The true brain mask is what brain extraction outlines: everything inside the inner skull
    # surface, i.e. the brain with the thin CSF layer around it (BET and deepbet both put the edge
    # there; the skull, scalp fat and background are outside).
    intracranial = ~np.isin(labels, [LABEL["background"], LABEL["skull"], LABEL["fat"]])
    indicators = {"brain": intracranial, "enhancing": classes[4], "nonenhancing": classes[1],
                  "edema": classes[2], "tumor": classes[4] | classes[1]}
    indicators = {name: mask.astype(np.float32) for name, mask in indicators.items()}
    return Anatomy(grid, labels, maps, indicators, tissues, tumors, lesion_ids)


def _stream(subject_seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([int(subject_seed), _STREAM[purpose]])

