"""Tests for the no-deep-model floors (cesynth.baselines), with known answers on real NIfTIs.

Subjects are small random model-grid volumes whose CE-T1 is an exact quadratic of the inputs
inside the brain and garbage outside it, so an exact fit also shows that only brain voxels
are used.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cesynth.baselines import (
    apply_voxel_regression,
    fit_voxel_regression,
    polynomial_exponents,
    t1_floor,
    write_floor_prediction,
)
from cesynth.io import InputError, is_synthetic, save_nifti

GRID_XYZ = (12, 10, 8)
AFFINE = np.diag([1.5, 1.25, 2.0, 1.0])
AFFINE[:3, 3] = [-9.0, -6.0, -8.0]
MODALITIES = ("T1w", "T2w", "adc")
# target = 0.2 + 0.5*T1 - 0.3*T2*adc + 0.1*T1^2, as exponents of (T1w, T2w, adc)
TRUE_COEFFICIENTS = {(0, 0, 0): 0.2, (1, 0, 0): 0.5, (0, 1, 1): -0.3, (2, 0, 0): 0.1}


def _relation(t1: np.ndarray, t2: np.ndarray, adc: np.ndarray) -> np.ndarray:
    t1, t2, adc = (np.asarray(v, dtype=np.float64) for v in (t1, t2, adc))
    return 0.2 + 0.5 * t1 - 0.3 * t2 * adc + 0.1 * t1 ** 2


def _brain_mask() -> np.ndarray:
    mask = np.zeros(GRID_XYZ, dtype=np.uint8)
    mask[2:10, 2:9, 1:7] = 1
    mask[4:6, 4:6, 3] = 0  # a hole, so the mask is not a box
    return mask


def _write_subject(root: Path, name: str, seed: int, missing: tuple[str, ...] = (),
                   noise: float = 0.0) -> dict[str, Path]:
    """Random float32 inputs on the model grid, the quadratic CE-T1 (missing inputs as zeros)."""
    rng = np.random.default_rng(seed)
    volumes = {m: rng.random(GRID_XYZ, dtype=np.float32) for m in MODALITIES}
    used = {m: (np.zeros(GRID_XYZ) if m in missing else v) for m, v in volumes.items()}
    mask = _brain_mask()
    target = _relation(*used.values()) + noise * rng.standard_normal(GRID_XYZ)
    target = np.where(mask > 0, target, 5.0 + rng.random(GRID_XYZ))  # garbage outside the brain
    paths = {m: save_nifti(v, AFFINE, root / f"{name}_space-model_desc-norm_{m}.nii.gz")
             for m, v in volumes.items() if m not in missing}
    paths["ceT1w"] = save_nifti(target, AFFINE, root / f"{name}_space-model_desc-norm_ceT1w.nii.gz")
    paths["mask"] = save_nifti(mask, AFFINE, root / f"{name}_space-model_desc-brain_mask.nii.gz",
                               dtype=np.uint8)
    return paths


def _coefficients(model: dict) -> dict[tuple[int, ...], float]:
    return {tuple(e): c for e, c in zip(model["feature_exponents"], model["coefficients"],
                                        strict=True)}


def _expected_coefficients(exponents: list[tuple[int, ...]]) -> dict[tuple[int, ...], float]:
    return {e: TRUE_COEFFICIENTS.get(e, 0.0) for e in exponents}


def _read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture
def fitted(tmp_path: Path) -> dict:
    """Two training subjects, a fitted quadratic model and a third (test) subject."""
    train = [_write_subject(tmp_path, f"sub-{i:02d}", seed=i) for i in range(2)]
    model_path = tmp_path / "floor" / "voxel_regression.json"
    model = fit_voxel_regression(train, model_path)
    return {"model": model, "path": model_path, "test": _write_subject(tmp_path, "sub-09", 9),
            "root": tmp_path}


# ---------------------------------------------------------------- regression


def test_import_needs_no_torch() -> None:
    """The fit runs in the base environment: importing the module must not load torch."""
    code = "import sys, cesynth.baselines; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120)
    assert result.stdout.strip() == "False"


def test_polynomial_exponents_cover_all_monomials() -> None:
    exponents = polynomial_exponents(3, 2)
    assert len(exponents) == 10 == len(set(exponents))
    assert exponents[0] == (0, 0, 0)
    assert all(sum(e) <= 2 for e in exponents)
    assert {(0, 1, 1), (2, 0, 0), (1, 0, 1)} <= set(exponents)
    assert len(polynomial_exponents(3, 3)) == 20


def test_regression_recovers_exact_quadratic(fitted: dict) -> None:
    model = fitted["model"]
    got = _coefficients(model)
    expected = _expected_coefficients(polynomial_exponents(3, 2))
    assert got.keys() == expected.keys()
    for exponents, value in expected.items():
        assert got[exponents] == pytest.approx(value, abs=1e-6), exponents
    assert model["r2_train"] == pytest.approx(1.0, abs=1e-9)
    assert model["n_subjects"] == 2
    assert model["n_voxels"] == 2 * int(_brain_mask().sum())
    assert model["modalities"] == list(MODALITIES) and model["degree"] == 2
    assert model["subjects"] == ["sub-00", "sub-01"]
    assert "T2w*adc" in model["feature_names"]
    assert json.loads(fitted["path"].read_text()) == json.loads(json.dumps(model))
    assert not [p for p in fitted["path"].parent.iterdir() if p.name.startswith(".")]


def test_apply_regression_matches_relation(fitted: dict) -> None:
    test = fitted["test"]
    inputs = {m: _read(test[m]) for m in MODALITIES}
    brain = _brain_mask()
    prediction = apply_voxel_regression(fitted["path"], inputs, brain)
    expected = np.where(brain > 0, np.clip(_relation(*inputs.values()), 0, 1), 0)
    assert prediction.dtype == np.float32 and prediction.shape == GRID_XYZ
    np.testing.assert_allclose(prediction, expected, atol=1e-6)
    assert (prediction[brain == 0] == 0).all()
    assert prediction.min() >= 0 and prediction.max() <= 1
    assert (prediction == 0).sum() > (brain == 0).sum()  # some negatives were clipped to 0


def test_fit_fills_missing_modality_with_zeros(tmp_path: Path) -> None:
    subjects = [_write_subject(tmp_path, "sub-01", 1),
                _write_subject(tmp_path, "sub-02", 2, missing=("adc",)),
                _write_subject(tmp_path, "sub-03", 3, missing=("T2w",))]
    subjects[2]["T2w"] = None  # None and an absent key both mean missing
    model = fit_voxel_regression(subjects, tmp_path / "model.json")
    got = _coefficients(model)
    for exponents, value in _expected_coefficients(polynomial_exponents(3, 2)).items():
        assert got[exponents] == pytest.approx(value, abs=1e-6), exponents


def test_modality_missing_everywhere_gets_zero_weight(tmp_path: Path) -> None:
    subjects = [_write_subject(tmp_path, f"sub-{i}", i, missing=("adc",)) for i in range(2)]
    model = fit_voxel_regression(subjects, tmp_path / "model.json")
    got = _coefficients(model)
    assert all(got[e] == pytest.approx(0.0, abs=1e-9) for e in got if e[2] > 0)
    assert got[(1, 0, 0)] == pytest.approx(0.5, abs=1e-6)


def test_subsample_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    subjects = [_write_subject(tmp_path, f"sub-{i}", i, noise=0.05) for i in range(2)]
    first = fit_voxel_regression(subjects, tmp_path / "a.json", max_voxels_per_subject=60, seed=3)
    fit_voxel_regression(subjects, tmp_path / "b.json", max_voxels_per_subject=60, seed=3)
    other = fit_voxel_regression(subjects, tmp_path / "c.json", max_voxels_per_subject=60, seed=4)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert first["n_voxels"] == 120 and first["seed"] == 3
    assert first["coefficients"] != other["coefficients"]
    assert first["r2_train"] < 1.0


def test_fit_rejects_mismatched_grid_and_writes_nothing(tmp_path: Path) -> None:
    subjects = [_write_subject(tmp_path, f"sub-{i}", i) for i in range(2)]
    bad = save_nifti(np.zeros((12, 10, 9), dtype=np.float32), AFFINE, tmp_path / "bad_T2w.nii.gz")
    subjects[1]["T2w"] = bad
    out = tmp_path / "floor" / "model.json"
    with pytest.raises(InputError, match="bad_T2w.nii.gz") as err:
        fit_voxel_regression(subjects, out)
    assert "\n" not in str(err.value)
    assert not out.parent.exists() or not list(out.parent.iterdir())


@pytest.mark.parametrize("change", [{"degree": 0}, {"max_voxels_per_subject": 0},
                                    {"modalities": ("T1w", "T1w")}, {"seed": -1}])
def test_fit_rejects_bad_arguments(tmp_path: Path, change: dict) -> None:
    subjects = [_write_subject(tmp_path, "sub-01", 1)]
    with pytest.raises(InputError):
        fit_voxel_regression(subjects, tmp_path / "model.json", **change)
    assert not (tmp_path / "model.json").exists()


# ---------------------------------------------------------------- t1 floor


def test_t1_floor_array_is_the_t1_in_the_brain() -> None:
    t1 = np.linspace(-0.2, 1.3, np.prod(GRID_XYZ)).reshape(GRID_XYZ)
    brain = _brain_mask()
    prediction = t1_floor({"T1w": t1, "T2w": None}, brain)
    np.testing.assert_array_equal(prediction, np.where(brain > 0, np.clip(t1, 0, 1), 0)
                                  .astype(np.float32))
    assert not np.signbit(prediction).any()  # no negative zeros


# ---------------------------------------------------------------- written predictions


def test_t1_floor_file_equals_t1_and_is_marked_synthetic(tmp_path: Path) -> None:
    subject = _write_subject(tmp_path, "sub-01", 1)
    out, sidecar_path = tmp_path / "out" / "sub-01_t1floor.nii.gz", tmp_path / "out" / "t1.json"
    inputs = {m: subject[m] for m in MODALITIES}
    sidecar = write_floor_prediction("t1", inputs, subject["mask"], out, sidecar_path)
    img = nib.load(str(out))
    brain = _brain_mask() > 0
    data = np.asarray(img.dataobj)
    assert img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(img.affine, nib.load(str(subject["mask"])).affine)
    np.testing.assert_array_equal(data[brain], _read(subject["T1w"])[brain])
    assert (data[~brain] == 0).all() and (_read(subject["T1w"])[~brain] > 0).all()
    assert is_synthetic(img)
    assert json.loads(sidecar_path.read_text()) == sidecar
    assert sidecar["Synthetic"] is True and sidecar["Floor"] == "t1"
    assert sidecar["InputModalities"] == ["T1w"] and sidecar["MissingModalities"] == []
    assert sidecar["Sources"] == [subject["T1w"].name, subject["mask"].name]
    assert str(tmp_path) not in sidecar_path.read_text()


def test_regression_floor_file_fills_missing_modality(fitted: dict) -> None:
    test, out_dir = fitted["test"], fitted["root"] / "out"
    inputs = {"T1w": test["T1w"], "T2w": test["T2w"], "adc": None}
    sidecar = write_floor_prediction("regression", inputs, test["mask"], out_dir / "reg.nii.gz",
                                     out_dir / "reg.json", model_json=fitted["path"])
    t1, t2 = _read(test["T1w"]), _read(test["T2w"])
    brain = _brain_mask() > 0
    expected = np.where(brain, np.clip(_relation(t1, t2, np.zeros(GRID_XYZ)), 0, 1), 0)
    img = nib.load(str(out_dir / "reg.nii.gz"))
    np.testing.assert_allclose(np.asarray(img.dataobj), expected, atol=1e-6)
    assert is_synthetic(img)
    assert sidecar["Synthetic"] is True and sidecar["Floor"] == "regression"
    assert sidecar["InputModalities"] == ["T1w", "T2w"]
    assert sidecar["MissingModalities"] == ["adc"] and sidecar["MissingModalityFill"] == "zeros"
    assert sidecar["RegressionModel"] == "voxel_regression.json"
    assert sidecar["Sources"] == [test["T1w"].name, test["T2w"].name, test["mask"].name,
                                  "voxel_regression.json"]
    assert json.loads((out_dir / "reg.json").read_text()) == sidecar


def _bad_t2(root: Path, problem: str) -> Path:
    path = root / f"wrong_{problem}_T2w.nii.gz"
    if problem == "shape":
        return save_nifti(np.zeros((12, 10, 9), dtype=np.float32), AFFINE, path)
    if problem == "affine":
        shifted = AFFINE.copy()
        shifted[0, 3] += 3.0
        return save_nifti(np.zeros(GRID_XYZ, dtype=np.float32), shifted, path)
    return path  # missing


@pytest.mark.parametrize("problem", ["shape", "affine", "missing"])
def test_bad_input_raises_one_line_error_naming_file(fitted: dict, problem: str) -> None:
    test, out_dir = fitted["test"], fitted["root"] / "out"
    bad = _bad_t2(fitted["root"], problem)
    inputs = {"T1w": test["T1w"], "T2w": bad, "adc": test["adc"]}
    with pytest.raises(InputError, match=bad.name) as err:
        write_floor_prediction("regression", inputs, test["mask"], out_dir / "reg.nii.gz",
                               out_dir / "reg.json", model_json=fitted["path"])
    assert "\n" not in str(err.value)
    assert not out_dir.exists() or not list(out_dir.iterdir())


def test_t1_off_the_mask_grid_is_rejected(tmp_path: Path) -> None:
    subject = _write_subject(tmp_path, "sub-01", 1)
    bad = _bad_t2(tmp_path, "shape")
    with pytest.raises(InputError, match=bad.name):
        write_floor_prediction("t1", {"T1w": bad}, subject["mask"], tmp_path / "o.nii.gz",
                               tmp_path / "o.json")
    assert not (tmp_path / "o.nii.gz").exists() and not (tmp_path / "o.json").exists()


@pytest.mark.parametrize(("kind", "inputs", "model", "who"), [
    ("mean", ("T1w",), False, "kind"),
    ("regression", ("T1w",), False, "model_json"),
    ("t1", ("T2w",), False, "T1w"),
    ("regression", ("T2w", "adc"), True, "T1w"),
])
def test_unusable_request_is_rejected(fitted: dict, kind: str, inputs: tuple[str, ...],
                                      model: bool, who: str) -> None:
    test, out = fitted["test"], fitted["root"] / "out" / "p.nii.gz"
    with pytest.raises(InputError) as err:
        write_floor_prediction(kind, {m: test[m] for m in inputs}, test["mask"], out,
                               out.with_suffix(".json"), fitted["path"] if model else None)
    assert err.value.who == who
    assert not out.parent.exists()


def test_malformed_model_is_rejected(fitted: dict) -> None:
    broken = fitted["root"] / "broken.json"
    model = json.loads(fitted["path"].read_text())
    broken.write_text(json.dumps({**model, "coefficients": model["coefficients"][:-1]}))
    test = fitted["test"]
    with pytest.raises(InputError, match="broken.json"):
        apply_voxel_regression(broken, {"T1w": _read(test["T1w"])}, _brain_mask())
