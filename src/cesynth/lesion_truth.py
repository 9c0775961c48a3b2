"""Enhancement truth on the model grid: where the contrast agent is, lesion by lesion.

Truth is never a difference of two separately normalised images. It comes from a lesion
segmentation with BraTS-2018 labels on the native CE-T1 grid: the phantom's own (its
``desc-lesion_dseg`` truth, with its contrast-agent map) or a real cohort's expert labels.

The model-grid **class map** (:func:`lesion_truth_to_model_grid`) holds, per voxel:

* :data:`ENHANCING` (4): enhancing tumor (the phantom's rim and solid lesions, BraTS 4);
* :data:`NON_ENHANCING` (1): non-enhancing tumor (necrotic core, non-enhancing glioma, BraTS 1);
* :data:`EDEMA` (2): edema or another T2 abnormality without enhancement (BraTS 2);
* :data:`OTHER_AGENT` (5): contrast agent outside every lesion (the phantom's vessels; real
  labels do not mark vessels, so real cohorts have none);
* 0 elsewhere.

Each class is moved with nearest-neighbour interpolation (as the tumor mask is); where two
classes land on one voxel the enhancing one wins, then the tumor core, then edema.

The **lesion instances** (a label per lesion over its whole extent, edema included) come from the
phantom's instance map and its types, or on real data from the connected components of the
lesion classes (a lesion is enhancing when it holds any enhancing voxel). Each lesion is moved on
its own; its size is the equivalent diameter of its tumor part (classes 4 and 1, edema left out)
measured on the native grid. An enhancing lesion is scored when some model voxel of it is
enhancing, a non-enhancing one when some model voxel samples it; others are noted, not scored.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from cesynth.io import InputError, load_nifti, read_json, save_nifti, write_json

NON_ENHANCING, EDEMA, ENHANCING, OTHER_AGENT = 1, 2, 4, 5
LESION_CLASSES = (NON_ENHANCING, EDEMA, ENHANCING)
"""Classes that belong to a lesion."""
AGENT_CLASSES = (ENHANCING, OTHER_AGENT)
"""Classes where contrast agent is: the brain-wide enhancement truth."""
KNOWN_LABELS = frozenset({0, NON_ENHANCING, EDEMA, ENHANCING})
"""Labels a native lesion segmentation may hold (BraTS 2018 convention)."""
CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
"""Neighbourhood of connected components and of touching: 26-connectivity."""
_PRIORITY = (EDEMA, NON_ENHANCING, ENHANCING)
"""Classes in the order they are painted: a later one wins a shared voxel."""


def equivalent_diameter(volume_mm3: float) -> float:
    """Diameter (mm) of the sphere of the given volume."""
    return float((6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0))


def read_label_volume(path: str | os.PathLike) -> tuple[np.ndarray, nib.Nifti1Image]:
    """A 3D label image as integers, with its image; stops on non-integer values."""
    img = load_nifti(path)
    data = np.asarray(img.dataobj, dtype=np.float64)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"expected a 3D label image, got shape {data.shape}")
    if not np.all(np.isfinite(data)) or np.any(data != np.rint(data)) or np.any(data < 0):
        raise InputError(path, "a label image must hold non-negative whole numbers")
    return data.astype(np.int64), img


def classes_from_label_names(names: Mapping[str, str],
                             source: str | os.PathLike) -> dict[int, int]:
    """Source label value -> class, from the label names of an expert segmentation's JSON.

    "enhancing tumor" is :data:`ENHANCING`, "necrotic / non-enhancing tumor core"
    :data:`NON_ENHANCING`, "edema" :data:`EDEMA`; a resection cavity and the background are no
    lesion. So BraTS 2018 (4 enhancing), BraTS 2023 (3 enhancing) and UCSF-PDGM (4 enhancing)
    mean the same. Any other name stops: a label the rule cannot place is never guessed.
    """
    classes = {}
    for value, name in names.items():
        lowered = name.lower()
        if "edema" in lowered:  # BraTS 2023: "edema (surrounding non-enhancing ...)"
            classes[int(value)] = EDEMA
        elif "non-enhancing" in lowered or "necrotic" in lowered:
            classes[int(value)] = NON_ENHANCING
        elif "enhancing" in lowered:
            classes[int(value)] = ENHANCING
        elif "background" in lowered or "resection cavity" in lowered:
            classes[int(value)] = 0
        else:
            raise InputError(source, f"label {value} ({name!r}) is no lesion class this "
                                     "pipeline knows (enhancing, necrotic/non-enhancing, edema)")
    return classes


def read_expert_dseg(dseg_path: str | os.PathLike,
                     sidecar_path: str | os.PathLike | None) -> tuple[np.ndarray, nib.Nifti1Image]:
    """An expert segmentation as lesion classes: its JSON's ``Labels`` names map the values
    (:func:`classes_from_label_names`); without a JSON the values must be BraTS 2018's."""
    data, img = read_label_volume(dseg_path)
    if sidecar_path is None or not os.path.exists(sidecar_path):
        return data, img
    names = read_json(sidecar_path).get("Labels") or {}
    mapping = classes_from_label_names(names, sidecar_path) if names else {}
    unknown = sorted(set(np.unique(data).tolist()) - set(mapping) - {0})
    if names and unknown:
        raise InputError(dseg_path, f"labels {unknown} are not named in "
                                    f"{os.path.basename(sidecar_path)}")
    if not mapping:
        return data, img
    lookup = np.zeros(int(data.max()) + 1, dtype=np.int64)
    for value, label in mapping.items():
        if value < lookup.size:
            lookup[value] = label
    return lookup[data], img


def lesion_truth_to_model_grid(dseg_path: str | os.PathLike, out_classes: str | os.PathLike,
                               out_instances: str | os.PathLike,
                               out_sidecar: str | os.PathLike, shape: Sequence[int], *,
                               dseg_sidecar_path: str | os.PathLike | None = None,
                               agent_path: str | os.PathLike | None = None,
                               instances_path: str | os.PathLike | None = None,
                               instances_sidecar_path: str | os.PathLike | None = None
                               ) -> dict[str, Any]:
    """Move a native lesion segmentation (and agent map) to the model grid, lesion by lesion.

    Args:
        dseg_path: native lesion segmentation with BraTS-2018 labels (:data:`KNOWN_LABELS`),
            or an expert segmentation whose JSON names its labels.
        out_classes: the model-grid class map to write (uint8, see the module docstring).
        out_instances: the model-grid lesion instance map to write (uint16, lesion ``i`` = i).
        out_sidecar: the JSON to write: ``model_voxel_mm3``, ``connectivity`` and ``lesions``.
        shape: the model grid, RAS-canonical ``(x, y, z)``.
        dseg_sidecar_path: the segmentation's JSON with ``Labels`` (value -> name), for
            an expert segmentation in another convention (:func:`read_expert_dseg`).
        agent_path: the phantom's native agent map (mM); agent outside every lesion becomes
            :data:`OTHER_AGENT`.
        instances_path, instances_sidecar_path: the phantom's native lesion instances and their
            JSON (``lesions``: ``label``, ``type``, ``enhancing``); without them, the
            components of the lesion classes.

    Returns:
        What the sidecar holds.
    """
    from cesynth.normalise import ModelGrid

    dseg, native = read_expert_dseg(dseg_path, dseg_sidecar_path)
    unknown = sorted(set(np.unique(dseg).tolist()) - KNOWN_LABELS)
    if unknown:
        raise InputError(dseg_path, f"labels {unknown} are not lesion classes "
                                    f"{sorted(KNOWN_LABELS)} (BraTS 2018: 1 core, 2 edema, "
                                    "4 enhancing)")
    grid = ModelGrid(tuple(shape))
    classes = _model_classes(dseg, native, grid, agent_path)
    instances, entries = _native_instances(dseg, native, instances_path, instances_sidecar_path)
    model_instances = np.zeros(grid.shape, dtype=np.uint16)
    native_voxel_mm3 = float(abs(np.linalg.det(native.affine[:3, :3])))
    model_voxel_mm3 = float(np.prod(grid.voxel_size_for(native)))
    lesions = []
    for entry in entries:
        inside = instances == entry["label"]
        img = nib.Nifti1Image(inside.astype(np.uint8), native.affine)
        sampled = np.asarray(grid.resample(img, is_mask=True).dataobj) > 0
        sampled &= model_instances == 0
        model_instances[sampled] = entry["label"]
        tumor_voxels = int((inside & np.isin(dseg, (ENHANCING, NON_ENHANCING))).sum())
        volume = float(tumor_voxels or int(inside.sum())) * native_voxel_mm3
        lesions.append(_lesion_entry(entry, volume, int(sampled.sum()),
                                     int((sampled & (classes == ENHANCING)).sum()),
                                     model_voxel_mm3))
    reference = grid.resample(nib.Nifti1Image(np.zeros(dseg.shape, np.uint8), native.affine),
                              is_mask=True)
    save_nifti(classes, reference.affine, out_classes, dtype=np.uint8)
    save_nifti(model_instances, reference.affine, out_instances, dtype=np.uint16)
    record = {"connectivity": 26, "model_voxel_mm3": model_voxel_mm3,
              "labels": {"non_enhancing": NON_ENHANCING, "edema": EDEMA,
                         "enhancing": ENHANCING, "other_agent": OTHER_AGENT},
              "lesions": lesions}
    write_json(record, out_sidecar)
    return record


def _model_classes(dseg: np.ndarray, native: nib.Nifti1Image, grid: Any,
                   agent_path: str | os.PathLike | None) -> np.ndarray:
    classes = np.zeros(grid.shape, dtype=np.uint8)
    for label in _PRIORITY:
        img = nib.Nifti1Image((dseg == label).astype(np.uint8), native.affine)
        classes[np.asarray(grid.resample(img, is_mask=True).dataobj) > 0] = label
    if agent_path is not None:
        agent_img = load_nifti(agent_path)
        if agent_img.shape[:3] != dseg.shape or not np.allclose(agent_img.affine, native.affine,
                                                                 atol=1e-3):
            raise InputError(agent_path, "the agent map is not on the lesion segmentation's grid")
        agent = np.asarray(agent_img.dataobj, dtype=np.float32) > 0
        img = nib.Nifti1Image(agent.astype(np.uint8), native.affine)
        other = (np.asarray(grid.resample(img, is_mask=True).dataobj) > 0) & (classes == 0)
        classes[other] = OTHER_AGENT
    return classes


def _native_instances(dseg: np.ndarray, native: nib.Nifti1Image,
                      instances_path: str | os.PathLike | None,
                      sidecar_path: str | os.PathLike | None
                      ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The native lesion instance map and one ``label``/``type``/``enhancing`` entry per lesion."""
    if instances_path is None:
        labels, count = ndimage.label(dseg > 0, structure=CONNECTIVITY)
        entries = []
        for label in range(1, count + 1):
            enhancing = bool(np.any(dseg[labels == label] == ENHANCING))
            entries.append({"label": label, "type": "enhancing" if enhancing else
                            "non-enhancing", "enhancing": enhancing})
        return labels, entries
    instances, img = read_label_volume(instances_path)
    if instances.shape != dseg.shape or not np.allclose(img.affine, native.affine, atol=1e-3):
        raise InputError(instances_path, "the lesion instances are not on the lesion "
                                         "segmentation's grid")
    listed = read_json(sidecar_path).get("lesions", []) if sidecar_path else []
    by_label = {int(item["label"]): item for item in listed}
    entries = []
    for label in sorted(set(np.unique(instances).tolist()) - {0}):
        item = by_label.get(label, {})
        enhancing = bool(item.get("enhancing", np.any(dseg[instances == label] == ENHANCING)))
        entries.append({"label": label, "type": item.get("type", "unknown"),
                        "enhancing": enhancing})
    return instances, entries


def _lesion_entry(entry: Mapping[str, Any], volume_mm3: float, model_voxels: int,
                  enhancing_voxels: int, model_voxel_mm3: float) -> dict[str, Any]:
    note = None
    if volume_mm3 < model_voxel_mm3:
        note = f"smaller than one model voxel ({volume_mm3:.1f} < {model_voxel_mm3:.1f} mm3)"
    elif model_voxels == 0:
        note = "no model voxel samples it"
    elif entry["enhancing"] and enhancing_voxels == 0:
        note = "no model voxel of it is enhancing"
    return {**entry, "volume_mm3": volume_mm3, "diameter_mm": equivalent_diameter(volume_mm3),
            "model_voxels": model_voxels, "enhancing_model_voxels": enhancing_voxels,
            "scored": note is None, "note": note}


def read_lesion_truth(classes_path: str | os.PathLike, instances_path: str | os.PathLike,
                      sidecar_path: str | os.PathLike
                      ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """The model-grid class map, instance map and lesion entries as
    :func:`lesion_truth_to_model_grid` wrote them."""
    classes, _ = read_label_volume(classes_path)
    instances, _ = read_label_volume(instances_path)
    return classes, instances, list(read_json(sidecar_path).get("lesions", []))


__all__ = [
    "AGENT_CLASSES", "CONNECTIVITY", "EDEMA", "ENHANCING", "KNOWN_LABELS", "LESION_CLASSES",
    "NON_ENHANCING", "OTHER_AGENT", "classes_from_label_names", "equivalent_diameter",
    "lesion_truth_to_model_grid", "read_expert_dseg", "read_label_volume", "read_lesion_truth",
]
