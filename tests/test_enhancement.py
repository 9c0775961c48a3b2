"""Enhancement endpoints on constructed cases with known answers: detection AUC, lesions found or
missed, false-positive components, the validation threshold, sub-voxel lesions, BraSyn SSIM."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cesynth.enhancement import (
    THRESHOLD_FALLBACK,
    brasyn_ssim,
    choose_threshold,
    enhancement_endpoints,
    equivalent_diameter,
    false_positive_components,
    flatten_endpoints,
    lesion_truth_to_model_grid,
    roc_auc,
    youden_threshold,
)
from cesynth.evaluate import evaluate_subject
from cesynth.evaluation_tables import (
    bootstrap_interval,
    lesion_sensitivity_by_size,
    read_lesions,
    tabulate_evaluation,
)
from cesynth.lesion_figure import plot_lesion_sensitivity

SHAPE = (24, 24, 12)
DELTA = 0.1
THRESHOLD = {"threshold": 0.2, "source": "validation", "delta": DELTA}
LESIONS = (np.s_[4:7, 4:7, 3:6], np.s_[14:17, 14:19, 3:6], np.s_[4:6, 16:18, 8:10])
"""Three enhancing lesions (27, 45 and 8 voxels), far apart."""


def phantom_subject(seed: int = 0) -> dict[str, np.ndarray]:
    """T1, CE-T1 (the T1 plus 0.5 in the lesions), brain and the true lesion labels."""
    rng = np.random.default_rng(seed)
    brain = np.zeros(SHAPE, dtype=bool)
    brain[2:22, 2:22, 1:11] = True
    t1 = np.where(brain, 0.3 + 0.05 * rng.random(SHAPE), 0.0)
    labels = np.zeros(SHAPE, dtype=np.int64)
    for i, lesion in enumerate(LESIONS, start=1):
        labels[lesion] = i
    cet1 = t1 + 0.5 * (labels > 0)
    return {"t1": t1, "cet1": cet1, "brain": brain, "labels": labels}


def lesion_entries(labels: np.ndarray) -> list[dict]:
    return [{"label": i, "volume_mm3": float((labels == i).sum()),
             "diameter_mm": equivalent_diameter(float((labels == i).sum())),
             "model_voxels": int((labels == i).sum()), "scored": True, "note": None}
            for i in range(1, int(labels.max()) + 1)]


def endpoints(subject: dict, synthetic: np.ndarray) -> dict:
    return enhancement_endpoints(synthetic, subject["t1"], subject["cet1"], subject["brain"],
                                 THRESHOLD, lesion_labels=subject["labels"],
                                 lesions=lesion_entries(subject["labels"]))


def test_a_perfect_prediction_finds_every_lesion_with_auc_one_and_no_false_positive():
    subject = phantom_subject()
    record = endpoints(subject, subject["cet1"])
    assert record["auc"] == 1.0
    assert record["sensitivity"] == 1.0 and record["specificity"] == 1.0
    assert record["dice"] == 1.0 and record["false_positives"] == 0
    assert record["brain"]["corr"] == pytest.approx(1.0) and record["brain"]["mae"] == 0.0
    lesions = record["lesions"]
    assert (lesions["scored"], lesions["found"], lesions["sensitivity"]) == (3, 3, 1.0)
    assert all(item["found"] for item in lesions["items"])


def test_an_erased_lesion_is_missed_and_the_others_found():
    subject = phantom_subject()
    synthetic = subject["cet1"].copy()
    synthetic[LESIONS[1]] = subject["t1"][LESIONS[1]]
    record = endpoints(subject, synthetic)
    found = {item["label"]: item["found"] for item in record["lesions"]["items"]}
    assert found == {1: True, 2: False, 3: True}
    assert record["lesions"]["sensitivity"] == pytest.approx(2 / 3)
    assert record["false_positives"] == 0 and record["auc"] < 1.0
    # 27, 45 and 8 mm3: 3.7, 4.4 and 2.5 mm across, all below 5 mm
    assert record["lesions"]["sensitivity_small"] == pytest.approx(2 / 3)
    assert record["lesions"]["sensitivity_large"] is None


def test_a_spurious_blob_is_one_false_positive():
    subject = phantom_subject()
    synthetic = subject["cet1"].copy()
    synthetic[10:12, 4:6, 8:10] += 0.5  # far from every lesion
    record = endpoints(subject, synthetic)
    assert record["false_positives"] == 1
    assert record["lesions"]["sensitivity"] == 1.0 and record["specificity"] < 1.0


def test_enhancement_next_to_a_lesion_is_not_a_false_positive():
    called = np.zeros(SHAPE, dtype=bool)
    enhancing = np.zeros(SHAPE, dtype=bool)
    enhancing[5:7, 5:7, 5] = True
    called[7:9, 5:7, 5] = True  # touches the lesion's face
    called[15, 15, 5] = True    # alone
    assert false_positive_components(called, enhancing) == 1


def test_a_constant_image_has_auc_one_half():
    subject = phantom_subject()
    subject["t1"] = np.where(subject["brain"], 0.3, 0.0)  # a uniform T1
    subject["cet1"] = subject["t1"] + 0.5 * (subject["labels"] > 0)
    record = endpoints(subject, np.where(subject["brain"], 0.6, 0.0))
    assert record["auc"] == 0.5 and record["brain"]["corr"] is None
    assert record["lesions"]["found"] == 3  # everything is called: every lesion, and no FP
    nothing = endpoints(subject, subject["t1"])  # no enhancement at all: constant E' = 0
    assert nothing["auc"] == 0.5 and nothing["lesions"]["found"] == 0
    assert nothing["sensitivity"] == 0.0 and nothing["specificity"] == 1.0


def test_roc_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, 60).astype(float)  # ties on purpose
    truth = rng.random(60) < 0.4
    pos, neg = scores[truth], scores[~truth]
    pairs = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    assert roc_auc(scores, truth) == pytest.approx(pairs.mean())
    assert math.isnan(roc_auc(scores, np.zeros(60, dtype=bool)))


def test_youden_threshold_separates_two_classes_and_says_so():
    scores = np.array([0.0, 0.1, 0.2, 0.6, 0.7, 0.9])
    truth = np.array([False, False, False, True, True, True])
    chosen = youden_threshold(scores, truth)
    assert chosen["threshold"] == pytest.approx(0.4)
    assert (chosen["youden_j"], chosen["sensitivity"], chosen["specificity"]) == (1.0, 1.0, 1.0)


def write(path, data, affine=None) -> str:
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32),
                             np.eye(4) if affine is None else affine), str(path))
    return str(path)


def write_subject(folder, name: str, subject: dict, synthetic: np.ndarray) -> dict[str, str]:
    return {"synthetic": write(folder / f"{name}_syn.nii.gz", synthetic),
            "t1": write(folder / f"{name}_t1.nii.gz", subject["t1"]),
            "cet1": write(folder / f"{name}_ce.nii.gz", subject["cet1"]),
            "mask": write(folder / f"{name}_brain.nii.gz", subject["brain"])}


def test_the_threshold_is_chosen_on_validation_files(tmp_path):
    subject = phantom_subject()
    files = write_subject(tmp_path, "val", subject, subject["cet1"])
    record = choose_threshold([files], DELTA, tmp_path / "threshold.json")
    assert record["source"] == "validation" and record["youden_j"] == pytest.approx(1.0)
    assert 0.0 < record["threshold"] < 0.5  # between no and full enhancement
    assert json.loads((tmp_path / "threshold.json").read_text()) == record


def test_without_validation_subjects_the_threshold_is_delta_and_noted(tmp_path):
    record = choose_threshold([], DELTA, tmp_path / "threshold.json")
    assert record["threshold"] == DELTA and record["source"] == THRESHOLD_FALLBACK
    assert "no validation subjects" in record["note"]


def test_a_lesion_below_a_model_voxel_is_noted_not_scored(tmp_path):
    native = np.zeros((32, 32, 32))
    native[4:12, 4:12, 4:12] = 1  # 512 mm3: 64 model voxels of 2 mm
    native[24, 24, 24] = 1        # 1 mm3, below one 8 mm3 model voxel
    truth = lesion_truth_to_model_grid(write(tmp_path / "enh.nii.gz", native),
                                       tmp_path / "labels.nii.gz", tmp_path / "labels.json",
                                       (16, 16, 16))
    assert truth["model_voxel_mm3"] == pytest.approx(8.0)
    big, tiny = truth["lesions"]
    assert big["scored"] and big["model_voxels"] == 64 and big["volume_mm3"] == 512.0
    assert not tiny["scored"] and "smaller than one model voxel" in tiny["note"]

    model_affine = nib.load(tmp_path / "labels.nii.gz").affine
    labels = np.asarray(nib.load(tmp_path / "labels.nii.gz").dataobj)
    t1 = np.full((16, 16, 16), 0.3)
    cet1 = t1 + 0.5 * (labels > 0)
    brain = np.ones((16, 16, 16))
    paths = {name: write(tmp_path / f"{name}.nii.gz", data, model_affine)
             for name, data in (("t1", t1), ("ce", cet1), ("brain", brain))}
    (tmp_path / "threshold.json").write_text(json.dumps(THRESHOLD))
    record = evaluate_subject(paths["ce"], paths["ce"], paths["brain"], tmp_path / "m.json",
                              subject="01", set_name="A", model="ours", t1_path=paths["t1"],
                              threshold_path=tmp_path / "threshold.json",
                              lesion_labels_path=tmp_path / "labels.nii.gz",
                              lesion_sidecar_path=tmp_path / "labels.json")
    lesions = record["enhancement"]["lesions"]
    assert (lesions["scored"], lesions["not_scored"], lesions["found"]) == (1, 1, 1)
    assert any("enhancing lesion 2: smaller than one model voxel" in n for n in record["notes"])
    flat = flatten_endpoints(record)
    assert flat["lesions_not_scored"] == 1 and flat["lesion_sensitivity"] == 1.0
    assert flat["lesion_sensitivity_large"] == 1.0  # 512 mm3: 9.9 mm across


def test_real_data_lesions_are_the_tumor_mask_within_the_true_enhancement():
    subject = phantom_subject()
    tumor = np.zeros(SHAPE, dtype=bool)
    tumor[3:8, 3:8, 2:7] = True  # holds lesion 1 only
    record = enhancement_endpoints(subject["cet1"], subject["t1"], subject["cet1"],
                                   subject["brain"], THRESHOLD, tumor=tumor)
    assert record["lesion_truth"] == "tumor mask and M"
    assert record["lesions"]["scored"] == 1 and record["lesions"]["found"] == 1
    assert record["tumor"]["mae"] == 0.0 and record["false_positives"] == 0


def test_brasyn_ssim_is_one_for_the_truth_and_ignores_intensity_outliers():
    subject = phantom_subject()
    tumor = subject["labels"] > 0
    same = brasyn_ssim(subject["cet1"], subject["cet1"], subject["brain"], tumor)
    assert same["tumor"] == pytest.approx(1.0) and same["outside"] == pytest.approx(1.0)
    spiked = subject["cet1"].copy()
    spiked[10, 10, 5] = 50.0  # one voxel: above the 99.5th percentile, clipped away
    assert brasyn_ssim(spiked, subject["cet1"], subject["brain"], tumor)["outside"] > 0.95


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    values = np.array([0.7, 0.8, 0.9, 0.85, 0.75])
    low, high = bootstrap_interval(values)
    assert low < values.mean() < high and (low, high) == bootstrap_interval(values)
    assert all(math.isnan(v) for v in bootstrap_interval(np.array([0.5])))


def test_tables_and_figure_carry_the_endpoints(tmp_path):
    subject = phantom_subject()
    erased = subject["cet1"].copy()
    erased[LESIONS[1]] = subject["t1"][LESIONS[1]]
    threshold = tmp_path / "threshold.json"
    threshold.write_text(json.dumps(THRESHOLD))
    jsons = []
    for model, synthetic in (("perfect", subject["cet1"]), ("eraser", erased)):
        for label in ("01", "02", "03"):
            files = write_subject(tmp_path, f"{model}{label}", subject, synthetic)
            labels = write(tmp_path / f"{label}_labels.nii.gz", subject["labels"])
            sidecar = tmp_path / f"{label}_labels.json"
            sidecar.write_text(json.dumps({"lesions": lesion_entries(subject["labels"])}))
            out = tmp_path / f"{model}{label}.json"
            evaluate_subject(files["synthetic"], files["cet1"], files["mask"], out,
                             subject=label, set_name="A", model=model, t1_path=files["t1"],
                             threshold_path=threshold, lesion_labels_path=labels,
                             lesion_sidecar_path=sidecar)
            jsons.append(out)
    paths = tabulate_evaluation(jsons, tmp_path / "eval")
    metrics = pd.read_csv(paths["metrics"], sep="\t")
    assert set(metrics.loc[metrics["model"] == "eraser", "lesion_sensitivity"]) == {2 / 3}
    assert (metrics["enh_threshold_source"] == "validation").all()
    summary = pd.read_csv(paths["summary"], sep="\t")
    assert {"enh_auc_ci_low", "enh_auc_ci_high", "false_positives_mean"} <= set(summary.columns)
    by_size = lesion_sensitivity_by_size(read_lesions(jsons))
    assert len(by_size[by_size["model"] == "perfect"]) == 4  # < 5 mm and three tertiles
    assert (by_size.loc[by_size["model"] == "perfect", "sensitivity"] == 1.0).all()
    tables = paths["tables"].read_text()
    assert "Enh. AUC" in tables and "Lesion sensitivity by size" in tables
    assert "| perfect | 0.2000 | validation |" in tables
    ttests = pd.read_csv(paths["ttests"], sep="\t")
    assert "lesion_sensitivity" in set(ttests["metric"])
    png = plot_lesion_sensitivity(paths["lesion_sensitivity"], tmp_path / "lesions.png")
    assert png.stat().st_size > 1000


def test_the_model_card_shows_the_endpoints_with_intervals():
    import datetime

    from cesynth.evaluation_tables import summarise
    from cesynth.model_card import model_card

    rows = [{"subject": f"{i:02d}", "set": "A", "model": "ours", "brain_psnr": 20.0 + i,
             "enh_auc": 0.8 + 0.05 * i, "false_positives": float(i)} for i in range(3)]
    summary = summarise(pd.DataFrame(rows), by=("set", "model"))
    sets = pd.DataFrame({"set": ["A"] * 3, "split": ["train", "validation", "test"],
                         "participant": ["01", "02", "03"]})
    card = model_card(release={"name": "m", "version": 1, "model_uri": "u", "run_id": "r",
                               "checkpoint_sha256": "x", "cascade": {}},
                      experiment="ours", settings={}, preprocessing={}, sets=sets,
                      summary=summary, gate={"passed": True}, evaluated_checkpoint="final",
                      date=datetime.date(2026, 1, 1))
    assert "| A (test) | Enh. AUC | 3 | 0.850±0.050 [" in card
    assert "| A (test) | FP comp./patient | 3 | 1.00±1.00 [" in card
