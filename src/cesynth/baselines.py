"""Two floors: CE-T1 predictions that need no deep model, to show what the network adds.

* :func:`t1_floor` predicts the normalised T1 itself.
* :func:`fit_voxel_regression` fits an ordinary least-squares polynomial (every monomial of the
  inputs up to ``degree``, cross terms and the constant included) from the inputs of a voxel to
  its CE-T1, on brain voxels of training subjects; :func:`apply_voxel_regression` applies it.
  No ridge term is added: ``numpy.linalg.lstsq`` returns the minimum-norm solution when the
  design is rank-deficient (a modality missing from every training subject, for one), so the
  terms of such a modality get zero weight. Subjects are streamed: only the R factor of a QR
  decomposition of ``[features | target]`` is kept between subjects (least squares on it is
  least squares on all rows), so memory does not grow with the number of subjects.

Both predictions follow :func:`cesynth.inference.synthesize`: a missing input is filled with
zeros (the paper's rule), the T1 is required, the result is clipped to [0, 1] and 0 outside the
brain mask. :func:`write_floor_prediction` writes either one as inference writes the network's
output (:func:`cesynth.io.write_synthetic`): a float32 NIfTI on the mask's grid marked
synthetic in its header, and a JSON sidecar (``"Synthetic": true``) naming files by base name
only. Everything is computed before anything is written. Nothing here imports torch, so the
floors run in the base environment.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from cesynth import __version__
from cesynth.cache import (
    INPUT_MODALITIES,
    TARGET_MODALITY,
    load_model_grid_image,
    load_on_mask_grid,
)
from cesynth.io import (
    InputError,
    check_synthetic_paths,
    read_json,
    write_json,
    write_synthetic,
)

PathLike = str | Path

FLOOR_KINDS = ("t1", "regression")
"""Accepted ``kind`` names of :func:`write_floor_prediction`."""

MASK_KEY = "mask"
"""Key of the brain mask in a training subject's mapping (:func:`fit_voxel_regression`)."""

REGRESSION_FORMAT = "cesynth-voxel-regression/1"
"""The ``format`` field of a voxel-regression JSON."""

_T1 = INPUT_MODALITIES[0]


# ---------------------------------------------------------------- arrays


def t1_floor(inputs: Mapping[str, np.ndarray | None], brain_mask: np.ndarray) -> np.ndarray:
    """The T1 floor: the normalised T1 itself as the CE-T1 prediction.

    Args:
        inputs: modality -> RAS model-grid ``(x, y, z)`` array; only ``T1w`` (required) is used.
        brain_mask: ``(x, y, z)`` brain mask (nonzero = brain).

    Returns:
        float32 ``(x, y, z)``: the T1 clipped to [0, 1] in the brain, 0 outside.

    Raises:
        InputError: the T1 is missing, of another shape than the mask, or not finite.
    """
    brain = _brain(brain_mask)
    (t1,) = _input_arrays((_T1,), inputs, brain.shape)
    return _finish(t1, brain)


def apply_voxel_regression(model_json: PathLike | Mapping[str, Any],
                           inputs: Mapping[str, np.ndarray | None],
                           brain_mask: np.ndarray) -> np.ndarray:
    """The regression floor: a fitted voxel-wise polynomial applied to one subject.

    Args:
        model_json: a JSON written by :func:`fit_voxel_regression`, or its parsed content.
        inputs: modality -> RAS model-grid ``(x, y, z)`` array. A modality of the model that is
            ``None`` or absent is filled with zeros; the first one (the T1) is required.
        brain_mask: ``(x, y, z)`` brain mask (nonzero = brain).

    Returns:
        float32 ``(x, y, z)`` prediction clipped to [0, 1], 0 outside the brain.

    Raises:
        InputError: the model file is missing or malformed, the T1 is missing, or an input is of
            another shape than the mask or not finite.
    """
    model = load_voxel_regression(model_json)
    brain = _brain(brain_mask)
    arrays = _input_arrays(model["modalities"], inputs, brain.shape)
    voxels = np.stack([array[brain] for array in arrays], axis=1)
    values = np.zeros(brain.shape)
    values[brain] = _features(voxels, model["feature_exponents"]) @ model["coefficients"]
    return _finish(values, brain)


def polynomial_exponents(n_inputs: int, degree: int) -> list[tuple[int, ...]]:
    """Exponents of every monomial of ``n_inputs`` variables of total degree up to ``degree``.

    Args:
        n_inputs: number of variables.
        degree: highest total degree.

    Returns:
        One exponent tuple per monomial, by total degree, then in the order of
        ``itertools.combinations_with_replacement`` (the constant first; for three inputs and
        degree 2: 1, a, b, c, a^2, ab, ac, b^2, bc, c^2).
    """
    return [tuple(combo.count(i) for i in range(n_inputs))
            for total in range(degree + 1)
            for combo in itertools.combinations_with_replacement(range(n_inputs), total)]


def _brain(brain_mask: np.ndarray) -> np.ndarray:
    brain = np.asarray(brain_mask) > 0
    if brain.ndim != 3:
        raise InputError("brain mask", f"expected a 3D (x, y, z) array, got shape {brain.shape}")
    return brain


def _input_arrays(modalities: Sequence[str], inputs: Mapping[str, np.ndarray | None],
                  shape: tuple[int, ...]) -> list[np.ndarray]:
    """The inputs in ``modalities`` order as float64 arrays, missing ones as zeros."""
    if inputs.get(modalities[0]) is None:
        raise InputError(modalities[0], "required input is missing (the first input)")
    arrays = []
    for modality in modalities:
        volume = inputs.get(modality)
        array = np.zeros(shape) if volume is None else np.asarray(volume, dtype=np.float64)
        if array.shape != shape:
            raise InputError(modality, f"shape {array.shape} differs from the brain mask's {shape}")
        if not np.isfinite(array).all():
            raise InputError(modality, "holds non-finite values (NaN or infinity)")
        arrays.append(array)
    return arrays


def _features(voxels: np.ndarray, exponents: Sequence[Sequence[int]]) -> np.ndarray:
    """``(n, p)`` float64 monomials of ``(n, m)`` voxel values, one column per exponent row."""
    voxels = np.asarray(voxels, dtype=np.float64)
    return np.column_stack([np.prod(voxels ** np.asarray(e), axis=1) for e in exponents])


def _finish(values: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Clip to [0, 1], zero outside the brain, float32 (negative zeros become +0)."""
    out = np.where(brain, np.clip(values, 0.0, 1.0), 0.0) + 0.0
    return np.ascontiguousarray(out, dtype=np.float32)


# ---------------------------------------------------------------- fitting


def fit_voxel_regression(
    subjects: Sequence[Mapping[str, PathLike | None]],
    out_json: PathLike,
    *,
    modalities: Sequence[str] = INPUT_MODALITIES,
    degree: int = 2,
    max_voxels_per_subject: int = 200_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit the voxel-wise polynomial regression floor and write it as JSON (atomically).

    Args:
        subjects: one mapping per training subject: ``mask`` (the model-grid brain mask),
            ``ceT1w`` (the normalised target) and the normalised model-grid ``modalities``;
            ``None`` or an absent key marks a missing input, filled with zeros (the first
            modality, the T1, is required). Other keys are ignored.
        out_json: where the model goes.
        modalities: input order of the model.
        degree: highest total degree of the monomials (1 is a linear fit).
        max_voxels_per_subject: a subject with more brain voxels contributes a random subset of
            this size, drawn by a generator seeded with ``(seed, subject index)``.
        seed: seed of the subsets.

    Returns:
        The JSON's content: ``format``, ``target``, ``modalities``, ``degree``,
        ``feature_exponents``, ``feature_names``, ``coefficients``, ``n_voxels``,
        ``n_subjects``, ``subjects`` (mask base names up to ``_space-``), ``r2_train`` (R^2 on
        the fitted voxels; ``None`` when the target is constant), ``max_voxels_per_subject``,
        ``seed``, ``solver`` and ``cesynth_version``.

    Raises:
        InputError: bad arguments, or a subject's file is missing, unreadable, off the mask's
            grid or not finite, its target or T1 is missing, or its brain mask is empty.
            Nothing is written then.
    """
    _check_fit_args(subjects, modalities, degree, max_voxels_per_subject, seed)
    exponents = polynomial_exponents(len(modalities), degree)
    solver = _StreamingLeastSquares(len(exponents))
    for index, subject in enumerate(subjects):
        voxels, target = _subject_samples(subject, modalities, max_voxels_per_subject,
                                          (seed, index))
        solver.add(_features(voxels, exponents), target)
    coefficients, r2 = solver.solve()
    model = {
        "format": REGRESSION_FORMAT, "target": TARGET_MODALITY, "modalities": list(modalities),
        "degree": degree, "feature_exponents": [list(e) for e in exponents],
        "feature_names": [_feature_name(e, modalities) for e in exponents],
        "coefficients": [float(c) for c in coefficients], "n_voxels": solver.n_rows,
        "n_subjects": len(subjects), "subjects": [_subject_name(s[MASK_KEY]) for s in subjects],
        "r2_train": r2, "max_voxels_per_subject": max_voxels_per_subject, "seed": seed,
        "solver": "numpy.linalg.lstsq on a streamed QR factor; no ridge (minimum-norm solution)",
        "cesynth_version": __version__,
    }
    write_json(model, out_json)
    return model


def load_voxel_regression(model_json: PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Read and check a voxel-regression model.

    Args:
        model_json: a JSON written by :func:`fit_voxel_regression`, or its parsed content.

    Returns:
        The model, with ``feature_exponents`` an ``(p, m)`` int array and ``coefficients`` a
        ``(p,)`` float64 array.

    Raises:
        InputError: the file is missing or malformed, or not a voxel-regression model.
    """
    who = "voxel regression" if isinstance(model_json, Mapping) else model_json
    model = dict(model_json) if isinstance(model_json, Mapping) else read_json(model_json)
    if not isinstance(model, dict) or model.get("format") != REGRESSION_FORMAT:
        raise InputError(who, f"not a voxel-regression model (format is not {REGRESSION_FORMAT})")
    try:
        exponents = np.asarray(model["feature_exponents"], dtype=np.int64)
        coefficients = np.asarray(model["coefficients"], dtype=np.float64)
        modalities = [str(m) for m in model["modalities"]]
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(who, f"malformed voxel-regression model ({err!r})") from err
    if (not modalities or exponents.shape != (len(coefficients), len(modalities))
            or (exponents < 0).any() or not np.isfinite(coefficients).all()):
        raise InputError(who, "malformed voxel-regression model (modalities, exponents and "
                         "coefficients do not agree)")
    return {**model, "modalities": modalities, "feature_exponents": exponents,
            "coefficients": coefficients}


class _StreamingLeastSquares:
    """Least squares over blocks of rows, keeping only the R factor of QR([X | y]).

    For any ``w``, ``|[R_old; B] w| = |[X_old; B] w|``, so the R factor of the stacked old
    factor and a new block is that of all rows so far. With ``R_full = [[R, z], [0, rho]]``,
    ``|X b - y|^2 = |R b - z|^2 + rho^2``.
    """

    def __init__(self, n_features: int):
        self._factor = np.zeros((0, n_features + 1))
        self.n_rows = 0
        self._sum = 0.0
        self._sum_squares = 0.0

    def add(self, features: np.ndarray, target: np.ndarray) -> None:
        """Add rows ``features`` ``(n, p)`` with targets ``target`` ``(n,)``."""
        block = np.column_stack([features, target])
        self._factor = np.linalg.qr(np.vstack([self._factor, block]), mode="r")
        self.n_rows += len(target)
        self._sum += float(np.sum(target))
        self._sum_squares += float(np.sum(np.square(target)))

    def solve(self) -> tuple[np.ndarray, float | None]:
        """The coefficients and the R^2 of the fit (``None`` for a constant target)."""
        n_features = self._factor.shape[1] - 1
        full = np.zeros((n_features + 1, n_features + 1))
        full[:len(self._factor)] = self._factor
        r, z, rho = full[:n_features, :n_features], full[:n_features, n_features], full[-1, -1]
        coefficients = np.linalg.lstsq(r, z, rcond=None)[0]
        residual = float(np.sum(np.square(r @ coefficients - z)) + rho ** 2)
        total = self._sum_squares - self._sum ** 2 / self.n_rows
        return coefficients, (1.0 - residual / total if total > 0 else None)


def _check_fit_args(subjects: Sequence[Mapping[str, Any]], modalities: Sequence[str],
                    degree: int, max_voxels_per_subject: int, seed: int) -> None:
    if not subjects:
        raise InputError("fit_voxel_regression", "no training subjects")
    if not modalities or len(set(modalities)) != len(modalities):
        raise InputError("modalities", f"need distinct input modalities, got {list(modalities)}")
    if TARGET_MODALITY in modalities or MASK_KEY in modalities:
        raise InputError("modalities", f"{list(modalities)} holds the target or the mask")
    if not isinstance(degree, int) or degree < 1:
        raise InputError("degree", f"must be an integer >= 1, got {degree!r}")
    if not isinstance(max_voxels_per_subject, int) or max_voxels_per_subject < 1:
        raise InputError("max_voxels_per_subject",
                         f"must be an integer >= 1, got {max_voxels_per_subject!r}")
    if not isinstance(seed, int) or seed < 0:
        raise InputError("seed", f"must be an integer >= 0, got {seed!r}")


def _subject_samples(subject: Mapping[str, PathLike | None], modalities: Sequence[str],
                     limit: int, seed: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A subject's brain voxels: ``(n, m)`` inputs (missing ones zero) and ``(n,)`` targets."""
    mask_path = subject.get(MASK_KEY)
    if mask_path is None:
        raise InputError(f"training subject {seed[1]}", "no brain mask (key 'mask')")
    if subject.get(TARGET_MODALITY) is None:
        raise InputError(mask_path, f"its subject has no {TARGET_MODALITY} target image")
    mask_img = load_model_grid_image(mask_path)
    brain = np.flatnonzero(np.asarray(mask_img.dataobj) > 0)
    if brain.size == 0:
        raise InputError(mask_path, "empty brain mask")
    if brain.size > limit:
        brain = np.sort(np.random.default_rng(seed).choice(brain, size=limit, replace=False))
    volumes = _load_inputs(subject, modalities, mask_img)
    target = load_on_mask_grid(subject[TARGET_MODALITY], mask_img).ravel()[brain]
    zeros = np.zeros(brain.size)
    voxels = [volumes[m].ravel()[brain] if m in volumes else zeros for m in modalities]
    return np.stack(voxels, axis=1).astype(np.float64), target.astype(np.float64)


def _feature_name(exponents: Sequence[int], modalities: Sequence[str]) -> str:
    terms = [m if e == 1 else f"{m}^{e}" for m, e in zip(modalities, exponents, strict=True)
             if e]
    return "*".join(terms) or "1"


def _subject_name(mask_path: PathLike) -> str:
    return Path(mask_path).name.split("_space-")[0].split(".")[0]


# ---------------------------------------------------------------- files


def write_floor_prediction(
    kind: str,
    input_paths: Mapping[str, PathLike | None],
    mask_path: PathLike,
    out_path: PathLike,
    sidecar_path: PathLike,
    model_json: PathLike | None = None,
) -> dict[str, Any]:
    """Predict one subject with a floor and write the NIfTI and its JSON sidecar.

    Args:
        kind: ``t1`` (:func:`t1_floor`) or ``regression`` (:func:`apply_voxel_regression`).
        input_paths: modality -> normalised model-grid NIfTI; ``None`` or an absent key marks a
            missing input, filled with zeros. ``T1w`` is required; inputs the floor does not
            use are ignored.
        mask_path: the model-grid brain mask; its grid and affine are the output's.
        out_path: output NIfTI (``.nii`` or ``.nii.gz``), float32, marked synthetic.
        sidecar_path: output JSON sidecar.
        model_json: the :func:`fit_voxel_regression` JSON; required for ``regression``, ignored
            for ``t1``.

    Returns:
        The sidecar written: ``Synthetic``, ``Description``, ``Modality``, ``Floor``,
        ``InputModalities``, ``MissingModalities``, ``MissingModalityFill``, ``ModelInputs``,
        ``Sources``, ``CesynthVersion``, ``SkullStripped``, ``IntensityRange``, and for
        ``regression`` also ``RegressionModel``, ``RegressionModelSHA256`` and
        ``RegressionDegree``.

    Raises:
        InputError: an unknown kind, no model for ``regression``, a missing T1, a missing or
            unreadable file, an image off the mask's grid (shape, orientation or affine) or not
            finite, or a bad output name. Nothing is written then.
    """
    model = _floor_model(kind, model_json)
    check_synthetic_paths(out_path, sidecar_path)
    modalities = [_T1] if model is None else model["modalities"]
    mask_img = load_model_grid_image(mask_path)
    brain = np.asarray(mask_img.dataobj) > 0
    volumes = _load_inputs(input_paths, modalities, mask_img)
    prediction = t1_floor(volumes, brain) if model is None else apply_voxel_regression(
        model, volumes, brain)
    sources = [*(input_paths[m] for m in volumes), mask_path,
               *([] if model is None else [model_json])]
    sidecar = _floor_sidecar(kind, modalities, list(volumes), sources)
    if model is not None:
        sidecar.update(RegressionModel=Path(model_json).name, RegressionDegree=model["degree"],
                       RegressionModelSHA256=hashlib.sha256(Path(model_json).read_bytes())
                       .hexdigest())
    write_synthetic(prediction, mask_img.affine, sidecar, out_path, sidecar_path)
    return sidecar


def _floor_model(kind: str, model_json: PathLike | None) -> dict[str, Any] | None:
    """The regression model for ``regression``, ``None`` for ``t1``."""
    if kind not in FLOOR_KINDS:
        raise InputError("kind", f"unknown floor {kind!r}; choose one of {', '.join(FLOOR_KINDS)}")
    if kind == "t1":
        return None
    if model_json is None:
        raise InputError("model_json", "the regression floor needs a fitted model")
    return load_voxel_regression(model_json)


def _load_inputs(paths: Mapping[str, PathLike | None], modalities: Sequence[str],
                 mask_img: nib.Nifti1Image) -> dict[str, np.ndarray]:
    """The given ``modalities`` as ``(x, y, z)`` float32 arrays; the first one is required."""
    if paths.get(modalities[0]) is None:
        raise InputError(modalities[0], "required input image is missing")
    return {m: load_on_mask_grid(p, mask_img) for m in modalities
            if (p := paths.get(m)) is not None}


def _floor_sidecar(kind: str, modalities: Sequence[str], used: Sequence[str],
                   sources: Sequence[PathLike]) -> dict[str, Any]:
    """The JSON sidecar of a floor prediction (file base names only)."""
    how = {"t1": "the normalised T1 itself",
           "regression": "a voxel-wise polynomial regression"}[kind]
    description = (f"Synthetic contrast-enhanced (gadolinium) T1-weighted image: a baseline "
                   f"computed by cesynth without a neural network ({how}) from "
                   f"{', '.join(used)}. It was not acquired and no contrast agent was given; "
                   "a reference for evaluation, not for diagnosis.")
    return {
        "Synthetic": True,
        "Description": description,
        "Modality": TARGET_MODALITY,
        "Floor": kind,
        "InputModalities": list(used),
        "MissingModalities": [m for m in modalities if m not in used],
        "MissingModalityFill": "zeros",
        "ModelInputs": list(modalities),
        "Sources": [Path(s).name for s in sources],
        "CesynthVersion": __version__,
        "SkullStripped": True,
        "IntensityRange": [0.0, 1.0],
    }


__all__ = ["FLOOR_KINDS", "MASK_KEY", "REGRESSION_FORMAT", "apply_voxel_regression",
           "fit_voxel_regression", "load_voxel_regression", "polynomial_exponents", "t1_floor",
           "write_floor_prediction"]
