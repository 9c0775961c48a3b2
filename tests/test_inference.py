"""Tests for applying a trained generator to one subject (cesynth.inference).

One tiny HR-FCN (width 1/16, one ResBlock per module) is trained for one short epoch on
synthetic 16 x 16 x 6 subjects, as in tests/test_train.py; everything runs on the CPU in seconds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers.checkpoints import stretch_output
from scipy import ndimage

from cesynth.cache import cache_subject
from cesynth.checkpoint import read_checkpoint
from cesynth.data import ValidationVolumes
from cesynth.inference import (
    Generator,
    load_generator,
    predict_volume,
    synthesize,
    synthesize_subject,
)
from cesynth.io import InputError, is_synthetic, save_nifti, write_json
from cesynth.models import model_from_settings
from cesynth.normalise import to_slice_major
from cesynth.settings import TrainSettings
from cesynth.train import Trainer, train

GRID_XYZ = (16, 16, 6)
MASK_SLICES = (1, 4)  # slices the brain mask covers
AFFINE = np.diag([1.5, 1.25, 2.0, 1.0])
AFFINE[:3, 3] = [-12.0, -10.0, -6.0]
MODALITIES = ("T1w", "T2w", "adc")
SETTINGS = {
    "model": "hrfcn3d", "width_multiplier": 1 / 16, "blocks_per_module": 1,
    "stages": [[1, 1.0, 1.0, 1.0, 3e-3]], "patches_per_subject": 3,
    "checkpoint_every_steps": 0, "seed": 5, "device": "cpu",
}


# ---------------------------------------------------------------- fixtures


def _write_subject(root: Path, name: str, rng: np.random.Generator) -> dict[str, Path]:
    """Smooth random model-grid T1/T2/ADC, a CE-T1 depending on them, mask and its sidecar."""
    t1, t2, adc = (np.clip(ndimage.gaussian_filter(rng.random(GRID_XYZ), 1.5) * 2 - 0.5, 0, 1)
                   for _ in range(3))
    blob = np.zeros(GRID_XYZ)
    blob[6:10, 6:10, 2:4] = 0.4
    mask = np.zeros(GRID_XYZ, dtype=np.uint8)
    mask[2:14, 3:13, MASK_SLICES[0]:MASK_SLICES[1] + 1] = 1
    volumes = {"T1w": t1, "T2w": t2, "adc": adc, "ceT1w": np.clip(0.7 * t1 + 0.2 * t2 + blob, 0, 1)}
    paths = {key: save_nifti(volume * mask, AFFINE,
                             root / f"{name}_space-model_desc-norm_{key}.nii.gz")
             for key, volume in volumes.items()}
    paths["mask"] = save_nifti(mask, AFFINE, root / f"{name}_space-model_desc-brain_mask.nii.gz",
                               dtype=np.uint8)
    paths["sidecar"] = write_json({"foreground_slices": list(MASK_SLICES)},
                                  root / f"{name}_space-model_desc-brain_mask.json")
    return paths


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny model trained on one subject, validated on another (whose files we predict)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("subjects")
    rng = np.random.default_rng(0)
    subjects = [_write_subject(root, f"sub-{i:02d}", rng) for i in range(2)]
    caches = [cache_subject({k: p[k] for k in (*MODALITIES, "ceT1w")}, p["mask"], p["sidecar"],
                            root / "cache") for p in subjects]
    out = tmp_path_factory.mktemp("run")
    settings = TrainSettings.from_dict(SETTINGS)
    summary = train(caches[:1], caches[1:], out, settings)
    stretch_output(summary["checkpoint_best"], settings, caches[1])
    return {"checkpoint": summary["checkpoint_best"], "settings": settings, "caches": caches,
            "out": out, "subject": subjects[1], "basetemp": tmp_path_factory.getbasetemp()}


@pytest.fixture(scope="module")
def generator(trained) -> Generator:
    return load_generator(trained["checkpoint"])


def _inputs(subject: dict[str, Path], skip: tuple[str, ...] = ()) -> dict[str, Path | None]:
    return {m: (None if m in skip else subject[m]) for m in MODALITIES}


def _run(generator: Generator, subject: dict[str, Path], out_dir: Path,
         images: dict[str, Path | None] | None = None, sidecar: Path | None = None) -> dict:
    return synthesize_subject(generator, images or _inputs(subject), subject["mask"],
                              sidecar or subject["sidecar"], out_dir / "sub_synth.nii.gz",
                              out_dir / "sub_synth.json")


def _data(path: Path) -> np.ndarray:
    return nib.load(str(path)).get_fdata(dtype=np.float32)


# ---------------------------------------------------------------- loading


def test_loaded_generator_predicts_as_the_trainers_model(trained, generator):
    trainer = Trainer(trained["caches"][:1], trained["caches"][1:], trained["out"],
                      trained["settings"])
    reference = model_from_settings(trained["settings"])
    reference.load_state_dict(read_checkpoint(trainer.best_path)["model"])
    reference.eval()
    volumes = ValidationVolumes(trained["caches"][1:])[0]
    inputs = torch.from_numpy(volumes.inputs)
    expected = predict_volume(reference, inputs)
    assert torch.equal(predict_volume(generator.model, inputs), expected)

    assert not generator.model.training
    assert all(not p.requires_grad for p in generator.model.parameters())
    assert generator.source == "checkpoint_best.pt" and generator.device == torch.device("cpu")
    digest = hashlib.sha256(Path(trained["checkpoint"]).read_bytes()).hexdigest()
    assert generator.checkpoint_sha256 == digest

    # synthesize = the trainer's validation prediction, clipped and masked
    subject = trained["subject"]
    arrays = {m: _data(subject[m]) for m in MODALITIES}
    first, last = MASK_SLICES
    result = synthesize(generator, arrays, _data(subject["mask"]), first, last)
    clipped = np.clip(expected[0].numpy(), 0, 1) * volumes.mask[0]
    np.testing.assert_allclose(to_slice_major(result)[first:last + 1], clipped, atol=1e-6)


def test_load_generator_leaves_the_global_rng_alone(trained):
    before = torch.get_rng_state()
    load_generator(trained["checkpoint"], device="auto")
    assert torch.equal(torch.get_rng_state(), before)


def test_missing_checkpoint_is_an_input_error(tmp_path):
    missing = tmp_path / "nowhere" / "checkpoint_best.pt"
    with pytest.raises(InputError, match="checkpoint not found") as caught:
        load_generator(missing)
    assert caught.value.who == str(missing)


def test_damaged_checkpoint_is_a_one_line_input_error(tmp_path):
    damaged = tmp_path / "checkpoint_best.pt"
    damaged.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError) as caught:
        load_generator(damaged)
    assert caught.value.who == str(damaged) and "\n" not in str(caught.value)


def test_checkpoint_with_foreign_objects_is_refused(tmp_path, trained):
    checkpoint = torch.load(trained["checkpoint"], map_location="cpu", weights_only=False)
    checkpoint["payload"] = Path("pickled objects could run code")
    tampered = tmp_path / "tampered.pt"
    torch.save(checkpoint, tampered)
    with pytest.raises(InputError, match="unreadable checkpoint"):
        load_generator(tampered)


def test_weights_that_do_not_fit_are_refused(tmp_path, trained):
    checkpoint = torch.load(trained["checkpoint"], map_location="cpu", weights_only=False)
    checkpoint["settings"]["blocks_per_module"] = 2
    other = tmp_path / "other.pt"
    torch.save(checkpoint, other)
    with pytest.raises(InputError, match="weights do not fit") as caught:
        load_generator(other)
    assert "\n" not in str(caught.value)


def test_unknown_device_is_refused(trained):
    with pytest.raises(InputError, match="unknown device"):
        load_generator(trained["checkpoint"], device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_an_input_error(trained):
    with pytest.raises(InputError, match="no CUDA device"):
        load_generator(trained["checkpoint"], device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_agrees_with_cpu(trained, generator):
    on_gpu = load_generator(trained["checkpoint"], device="cuda")
    assert next(on_gpu.model.parameters()).is_cuda
    subject = trained["subject"]
    arrays = {m: _data(subject[m]) for m in MODALITIES}
    mask = _data(subject["mask"])
    np.testing.assert_allclose(synthesize(on_gpu, arrays, mask, *MASK_SLICES),
                               synthesize(generator, arrays, mask, *MASK_SLICES), atol=1e-2)


# ---------------------------------------------------------------- arrays


def test_synthesize_zero_fills_missing_inputs_and_requires_t1(trained, generator):
    subject = trained["subject"]
    arrays = {m: _data(subject[m]) for m in MODALITIES}
    mask = _data(subject["mask"])
    without = synthesize(generator, {**arrays, "T2w": None}, mask, *MASK_SLICES)
    zeros = synthesize(generator, {**arrays, "T2w": np.zeros(GRID_XYZ)}, mask, *MASK_SLICES)
    absent = synthesize(generator, {k: v for k, v in arrays.items() if k != "T2w"}, mask,
                        *MASK_SLICES)
    np.testing.assert_array_equal(without, zeros)
    np.testing.assert_array_equal(absent, zeros)
    with pytest.raises(InputError, match="required"):
        synthesize(generator, {**arrays, "T1w": None}, mask, *MASK_SLICES)


def test_synthesize_handles_a_range_shorter_than_a_window(trained, generator):
    subject = trained["subject"]
    arrays = {m: _data(subject[m]) for m in MODALITIES}
    result = synthesize(generator, arrays, _data(subject["mask"]), 4, 4)
    assert result.shape == GRID_XYZ and result.dtype == np.float32
    assert np.count_nonzero(result[..., 4]) > 0
    assert not np.any(np.delete(result, 4, axis=2))


def test_synthesize_checks_shapes_and_slice_range(trained, generator):
    subject = trained["subject"]
    arrays = {m: _data(subject[m]) for m in MODALITIES}
    mask = _data(subject["mask"])
    with pytest.raises(InputError, match="adc: shape"):
        synthesize(generator, {**arrays, "adc": arrays["adc"][:, :, :5]}, mask, *MASK_SLICES)
    with pytest.raises(InputError, match="outside"):
        synthesize(generator, arrays, mask, 2, 6)


# ---------------------------------------------------------------- files


def test_written_image_is_synthetic_masked_and_in_range(tmp_path, trained, generator):
    subject = trained["subject"]
    # the sidecar's range is narrower than the mask: slice 4 is brain but not predicted
    narrow = write_json({"foreground_slices": [1, 3]}, tmp_path / "narrow_mask.json")
    summary = _run(generator, subject, tmp_path, sidecar=narrow)
    img = nib.load(str(summary["output"]))
    mask_img = nib.load(str(subject["mask"]))
    data = img.get_fdata(dtype=np.float32)

    assert is_synthetic(img)
    assert img.shape == mask_img.shape and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, mask_img.affine, atol=1e-6)
    assert not np.any(data[np.asarray(mask_img.dataobj) == 0])
    assert not np.any(data[..., [0, 4, 5]])
    assert data.min() >= 0 and data.max() <= 1
    inside = data[..., 1:4][np.asarray(mask_img.dataobj)[..., 1:4] > 0]
    assert np.any(inside == 1) and np.any(inside == 0) and np.any((inside > 0) & (inside < 1))
    assert not np.any(np.signbit(data))  # no negative zeros either
    assert summary["slices_predicted"] == 3 and summary["foreground_slices"] == [1, 3]
    assert summary["missing_modalities"] == []


def test_sidecar_records_provenance_without_directories(tmp_path, trained, generator):
    summary = _run(generator, trained["subject"], tmp_path)
    text = summary["sidecar"].read_text()
    sidecar = json.loads(text)

    assert sidecar["Synthetic"] is True and sidecar["Modality"] == "ceT1w"
    assert "not acquired" in sidecar["Description"].lower()
    assert sidecar["InputModalities"] == list(MODALITIES) and sidecar["MissingModalities"] == []
    assert sidecar["Model"] == "hrfcn3d" and sidecar["Checkpoint"] == "checkpoint_best.pt"
    assert sidecar["CheckpointSHA256"] == generator.checkpoint_sha256
    assert sidecar["CesynthVersion"]
    assert "sub-01_space-model_desc-norm_T1w.nii.gz" in sidecar["Sources"]
    for directory in (tmp_path, trained["basetemp"], trained["out"]):
        assert str(directory) not in text
    strings = [v for v in sidecar.values() if isinstance(v, str)]
    strings += [s for v in sidecar.values() if isinstance(v, list) for s in v if isinstance(s, str)]
    assert not any("/" in s or "\\" in s for s in strings)


def test_missing_t2_equals_zero_t2_and_is_recorded(tmp_path, trained, generator):
    subject = trained["subject"]
    zero_t2 = save_nifti(np.zeros(GRID_XYZ), AFFINE, tmp_path / "zero_T2w.nii.gz")
    explicit = _run(generator, subject, tmp_path / "zero", {**_inputs(subject), "T2w": zero_t2})
    missing = _run(generator, subject, tmp_path / "missing", _inputs(subject, skip=("T2w",)))

    np.testing.assert_array_equal(_data(missing["output"]), _data(explicit["output"]))
    sidecar = json.loads(missing["sidecar"].read_text())
    assert sidecar["MissingModalities"] == ["T2w"] and missing["missing_modalities"] == ["T2w"]
    assert sidecar["InputModalities"] == ["T1w", "adc"]
    assert "zero_T2w.nii.gz" not in sidecar["Sources"]


@pytest.mark.parametrize("zeroed", [("T2w",), ("T1w",), ("T2w", "adc")])
def test_zeroed_inputs_equal_zero_images_and_are_recorded(tmp_path, trained, generator, zeroed):
    """The paper's Fig. 10: an input that exists is replaced by zeros at test time."""
    subject = trained["subject"]
    zero = save_nifti(np.zeros(GRID_XYZ), AFFINE, tmp_path / "zero.nii.gz")
    explicit = _run(generator, subject, tmp_path / "zero",
                    {**_inputs(subject), **dict.fromkeys(zeroed, zero)})
    summary = synthesize_subject(generator, _inputs(subject), subject["mask"],
                                 subject["sidecar"], tmp_path / "z.nii.gz", tmp_path / "z.json",
                                 zeroed=zeroed)
    np.testing.assert_array_equal(_data(summary["output"]), _data(explicit["output"]))
    sidecar = json.loads(summary["sidecar"].read_text())
    assert sidecar["ZeroedInputs"] == list(zeroed)
    assert sidecar["MissingModalities"] == list(zeroed)
    assert not any(f"_{m}" in " ".join(sidecar["Sources"]) for m in zeroed)


def test_missing_t1_is_an_input_error(tmp_path, trained, generator):
    with pytest.raises(InputError, match="T1w: required"):
        _run(generator, trained["subject"], tmp_path, _inputs(trained["subject"], skip=("T1w",)))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("problem", ["shape", "affine"])
def test_grid_mismatch_names_the_file_and_writes_nothing(tmp_path, trained, generator, problem):
    subject = trained["subject"]
    volume = _data(subject["adc"])
    if problem == "shape":
        bad = save_nifti(volume[:, :, :5], AFFINE, tmp_path / "in" / "bad_adc.nii.gz")
    else:
        shifted = AFFINE.copy()
        shifted[0, 3] += 3.0
        bad = save_nifti(volume, shifted, tmp_path / "in" / "bad_adc.nii.gz")
    out = tmp_path / "out"
    with pytest.raises(InputError) as caught:
        _run(generator, subject, out, {**_inputs(subject), "adc": bad})
    assert caught.value.who == str(bad) and "bad_adc.nii.gz" in str(caught.value)
    assert not out.exists() or not list(out.iterdir())

