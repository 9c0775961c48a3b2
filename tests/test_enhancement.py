"""Enhancement endpoints on constructed cases with known answers.

Each endpoint must tell what it names from its look-alikes: a perfect map of the agent, a whole
lesion painted one grey (high tumor PSNR, no rim), a uniform brightening, enhancement in the wrong
place, a brightened non-enhancing lesion, and a threshold that calls every voxel.
"""

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
    false_positive_components,
    flatten_endpoints,
    roc_auc,
    youden_threshold,
)
from cesynth.evaluate import evaluate_subject, psnr_in_mask
from cesynth.evaluation_tables import (
    bootstrap_interval,
    lesion_sensitivity_by_size,
    read_lesions,
    tabulate_evaluation,
)
from cesynth.io import InputError
from cesynth.lesion_figure import plot_lesion_sensitivity
from cesynth.lesion_truth import (
    EDEMA,
    ENHANCING,
    NON_ENHANCING,
    OTHER_AGENT,
    equivalent_diameter,
    lesion_truth_to_model_grid,
)

SHAPE = (28, 28, 14)
DELTA = 0.1
THRESHOLD = {"threshold": 0.2, "source": "validation", "delta": DELTA}
RIM_LESION = np.s_[3:10, 3:10, 3:10]     # 7^3: a 3^3 necrotic core in a rim, edema shell outside
RIM_CORE = np.s_[5:8, 5:8, 5:8]
SOLID_LESION = np.s_[16:18, 4:6, 4:6]    # 8 voxels, solid enhancing (2.5 mm across)
QUIET_LESION = np.s_[16:20, 16:20, 4:8]  # 64 voxels, non-enhancing (no agent)
VESSEL = np.s_[24, 3:24, 11]             # agent outside every lesion


def lesion_subject(seed: int = 0) -> dict:
    """T1, CE-T1 (the T1 plus 0.5 where the agent is), brain, class map, instances, entries."""
    rng = np.random.default_rng(seed)
    brain = np.zeros(SHAPE, dtype=bool)
    brain[1:27, 1:27, 1:13] = True
    classes = np.zeros(SHAPE, dtype=np.int64)
    instances = np.zeros(SHAPE, dtype=np.int64)
    classes[RIM_LESION] = EDEMA
    classes[4:9, 4:9, 4:9] = ENHANCING
    classes[RIM_CORE] = NON_ENHANCING
    classes[SOLID_LESION] = ENHANCING
    classes[QUIET_LESION] = NON_ENHANCING
    classes[VESSEL] = OTHER_AGENT
    for label, region in enumerate((RIM_LESION, SOLID_LESION, QUIET_LESION), start=1):
        instances[region] = label
    # dyadic intensities: a constant added to the T1 gives exactly that constant as E'
    t1 = np.where(brain, 0.25 + rng.integers(0, 64, SHAPE) / 1024, 0.0)
    t1[np.isin(classes, (NON_ENHANCING, EDEMA))] -= 0.125  # T1-dark lesion tissue
    agent = np.isin(classes, (ENHANCING, OTHER_AGENT))
    cet1 = t1 + 0.5 * agent
    entries = []
    for label, kind, enhancing in ((1, "rim", True), (2, "solid", True),
                                   (3, "nonenhancing", False)):
        inside = instances == label
        tumor = inside & np.isin(classes, (ENHANCING, NON_ENHANCING))
        entries.append({"label": label, "type": kind, "enhancing": enhancing,
                        "volume_mm3": float(tumor.sum()),
                        "diameter_mm": equivalent_diameter(float(tumor.sum())),
                        "model_voxels": int(inside.sum()), "scored": True, "note": None})
    return {"t1": t1, "cet1": cet1, "brain": brain, "classes": classes,
            "instances": instances, "lesions": entries}


def endpoints(subject: dict, synthetic: np.ndarray, threshold: dict = THRESHOLD) -> dict:
    return enhancement_endpoints(synthetic, subject["t1"], subject["cet1"], subject["brain"],
                                 threshold, subject["classes"], instances=subject["instances"],
                                 lesions=subject["lesions"])


def test_a_perfect_map_of_the_agent_scores_one_everywhere():
    subject = lesion_subject()
    record = endpoints(subject, subject["cet1"])
    assert record["auc"] == 1.0 and record["lesion_auc"] == 1.0
    assert record["recovered_share"] == pytest.approx(1.0)
    assert record["sensitivity"] == 1.0 and record["specificity"] == 1.0
    assert record["dice"] == 1.0 and record["false_positives"] == 0
    lesions = record["lesions"]
    assert (lesions["scored"], lesions["found"], lesions["sensitivity"]) == (2, 2, 1.0)
    assert (lesions["nonenhancing"], lesions["nonenhancing_called"]) == (1, 0)
    assert not record["degenerate"]


def test_a_lesion_painted_one_grey_keeps_its_tumor_psnr_but_draws_no_rim():
    subject = lesion_subject()
    lesion = np.isin(subject["classes"], (NON_ENHANCING, EDEMA, ENHANCING))
    painted = np.where(lesion, subject["t1"] + 0.25, subject["cet1"])
    tumor = np.isin(subject["classes"], (ENHANCING, NON_ENHANCING)) & (subject["instances"] == 1)
    assert (psnr_in_mask(painted, subject["cet1"], tumor)
            > psnr_in_mask(subject["t1"], subject["cet1"], tumor) + 3)  # tumor PSNR rewards it
    record = endpoints(subject, painted)
    assert record["lesion_auc"] == pytest.approx(0.5)
    assert record["recovered_share"] == pytest.approx(0.0, abs=1e-9)
    # the painted non-enhancing lesion is called, and charged as a false positive
    assert record["lesions"]["nonenhancing_called"] == 1 and record["false_positives"] == 1


def test_the_core_endpoints_tell_a_drawn_rim_from_a_brightened_tumor_core():
    """The look-alike of a rim: the whole tumor core (rim and necrosis) brightened, the edema
    not. Against the rest of the lesion (edema included) it scores well; against the necrotic
    core alone, which is what a rim is drawn against, it scores one half and recovers nothing."""
    subject = lesion_subject()
    record = endpoints(subject, subject["cet1"])
    assert record["core_auc"] == 1.0 and record["core_recovered_share"] == pytest.approx(1.0)
    core = np.isin(subject["classes"], (ENHANCING, NON_ENHANCING))  # every lesion's tumor
    brightened_core = np.where(core, subject["t1"] + 0.5, subject["t1"])
    record = endpoints(subject, brightened_core)
    assert record["lesion_auc"] > 0.7 and record["recovered_share"] > 0.5
    assert record["core_auc"] == pytest.approx(0.5)
    assert record["core_recovered_share"] == pytest.approx(0.0, abs=1e-9)
    reversed_rim = np.where(subject["classes"] == NON_ENHANCING, subject["t1"] + 0.5,
                            subject["t1"])
    record = endpoints(subject, reversed_rim)
    assert record["core_auc"] < 0.5 and record["core_recovered_share"] < 0
    flat = flatten_endpoints({"enhancement": record})
    assert flat["enh_core_auc"] == record["core_auc"]
    assert flat["enh_core_recovered_share"] == record["core_recovered_share"]


def test_enhancement_in_the_wrong_place_finds_nothing_and_is_one_false_positive():
    subject = lesion_subject()
    synthetic = subject["t1"].copy()
    synthetic[10:13, 20:23, 2:5] += 0.5  # far from every lesion and vessel
    record = endpoints(subject, synthetic)
    assert record["false_positives"] == 1 and record["lesions"]["found"] == 0
    assert record["lesion_auc"] == 0.5 and record["recovered_share"] == 0.0
    assert record["auc"] < 0.6


def test_a_brightened_non_enhancing_lesion_is_a_false_positive():
    subject = lesion_subject()
    synthetic = subject["cet1"].copy()
    synthetic[QUIET_LESION] += 0.5
    record = endpoints(subject, synthetic)
    assert record["false_positives"] == 1 and record["lesions"]["nonenhancing_called"] == 1
    assert record["lesions"]["sensitivity"] == 1.0 and record["lesion_auc"] < 1.0


def test_a_uniform_brightening_has_auc_one_half_and_its_threshold_is_flagged():
    subject = lesion_subject()
    brightened = np.where(subject["brain"], subject["t1"] + 0.25, 0.0)
    record = endpoints(subject, brightened)
    assert record["auc"] == 0.5 and record["lesion_auc"] == 0.5
    assert record["called_share"] == 1.0 and record["degenerate"]
    # every voxel called: every lesion "found" and no false positive - so none of it is shown
    assert record["lesions"]["found"] == 2 and record["false_positives"] == 0
    flat = flatten_endpoints({"enhancement": record})
    assert flat["threshold_degenerate"] == 1.0
    for column in ("enh_sensitivity", "lesion_sensitivity", "false_positives", "enh_dice"):
        assert math.isnan(flat[column]), column
    assert flat["enh_auc"] == 0.5 and flat["enh_called_share"] == 1.0


def test_a_threshold_degenerate_on_validation_empties_every_subject_s_detection_columns():
    subject = lesion_subject()
    record = endpoints(subject, subject["cet1"], {**THRESHOLD, "degenerate": True})
    flat = flatten_endpoints({"enhancement": record})
    assert flat["threshold_degenerate"] == 1.0 and math.isnan(flat["lesion_sensitivity"])
    assert flat["enh_lesion_auc"] == 1.0  # threshold-free endpoints stay


def test_without_agent_the_t1_scores_one_half_and_finds_nothing():
    subject = lesion_subject()
    record = endpoints(subject, subject["t1"])  # E' = 0 everywhere
    assert record["auc"] == 0.5 and record["lesion_auc"] == 0.5
    assert record["recovered_share"] == 0.0 and record["lesions"]["found"] == 0
    assert record["sensitivity"] == 0.0 and record["specificity"] == 1.0


def test_small_false_positive_components_and_ones_near_the_agent_are_not_counted():
    agent = np.zeros(SHAPE, dtype=bool)
    agent[5:7, 5:7, 5] = True
    called = np.zeros(SHAPE, dtype=bool)
    called[8:10, 5:7, 5] = True    # 2 mm from the agent: inside the 3 mm margin
    called[20, 20, 5] = True       # 1 mm3: below the minimum volume
    called[15:18, 15:18, 5:8] = True  # 27 mm3, far
    assert false_positive_components(called, agent, (1.0, 1.0, 1.0)) == 1
    # on a 3 mm grid one voxel (27 mm3) is large enough, and 2 voxels are 6 mm: outside the margin
    assert false_positive_components(called, agent, (3.0, 3.0, 3.0)) == 3


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


def write_truth(folder, name: str, subject: dict) -> dict[str, str]:
    sidecar = folder / f"{name}_lesions.json"
    sidecar.write_text(json.dumps({"lesions": subject["lesions"]}))
    return {"classes": write(folder / f"{name}_classes.nii.gz", subject["classes"]),
            "instances": write(folder / f"{name}_instances.nii.gz", subject["instances"]),
            "sidecar": str(sidecar)}


def write_subject(folder, name: str, subject: dict, synthetic: np.ndarray) -> dict[str, str]:
    return {"synthetic": write(folder / f"{name}_syn.nii.gz", synthetic),
            "t1": write(folder / f"{name}_t1.nii.gz", subject["t1"]),
            "cet1": write(folder / f"{name}_ce.nii.gz", subject["cet1"]),
            "mask": write(folder / f"{name}_brain.nii.gz", subject["brain"]),
            **write_truth(folder, name, subject)}


def test_the_threshold_is_chosen_on_validation_subjects_with_lesions(tmp_path):
    subject = lesion_subject()
    files = write_subject(tmp_path, "val", subject, subject["cet1"])
    record = choose_threshold([files], DELTA, tmp_path / "threshold.json")
    assert record["source"] == "validation" and record["youden_j"] == pytest.approx(1.0)
    assert 0.0 < record["threshold"] < 0.5  # between no and full enhancement
    assert record["validation_subjects_with_lesions"] == 1 and not record["degenerate"]
    assert json.loads((tmp_path / "threshold.json").read_text()) == record


def test_validation_subjects_without_lesions_give_the_fallback_and_say_so(tmp_path):
    subject = lesion_subject()
    subject["classes"] = np.zeros(SHAPE, dtype=np.int64)
    files = write_subject(tmp_path, "val", subject, subject["cet1"])
    record = choose_threshold([files], DELTA, tmp_path / "threshold.json")
    assert record["threshold"] == DELTA and record["source"] == THRESHOLD_FALLBACK
    assert "no validation subject has a lesion" in record["note"]
    empty = choose_threshold([], DELTA, tmp_path / "none.json")
    assert "no validation subjects" in empty["note"] and empty["called_share"] is None


def test_a_threshold_calling_every_validation_voxel_is_flagged_degenerate(tmp_path):
    subject = lesion_subject()
    brightened = np.where(subject["brain"], subject["t1"] + 0.25, 0.0)
    files = write_subject(tmp_path, "val", subject, brightened)
    record = choose_threshold([files], DELTA, tmp_path / "threshold.json")
    assert record["called_share"] > 0.5 and record["degenerate"]


def test_lesion_truth_moves_classes_agent_and_lesions_to_the_model_grid(tmp_path):
    dseg = np.zeros((32, 32, 32))
    dseg[2:14, 2:14, 2:14] = EDEMA
    dseg[4:12, 4:12, 4:12] = ENHANCING    # a rim-enhancing lesion ...
    dseg[6:10, 6:10, 6:10] = NON_ENHANCING  # ... around its core
    dseg[20:28, 20:28, 20:28] = NON_ENHANCING  # a non-enhancing lesion
    dseg[28, 4, 28] = ENHANCING           # 1 mm3, below one 8 mm3 model voxel
    agent = (dseg == ENHANCING).astype(float)
    agent[30:32, 2:30, 30:32] = 1.0        # a vessel
    truth = lesion_truth_to_model_grid(write(tmp_path / "dseg.nii.gz", dseg),
                                       tmp_path / "classes.nii.gz",
                                       tmp_path / "instances.nii.gz",
                                       tmp_path / "lesions.json", (16, 16, 16),
                                       agent_path=write(tmp_path / "agent.nii.gz", agent))
    assert truth["model_voxel_mm3"] == pytest.approx(8.0)
    classes = np.asarray(nib.load(tmp_path / "classes.nii.gz").dataobj)
    assert set(np.unique(classes)) == {0, NON_ENHANCING, EDEMA, ENHANCING, OTHER_AGENT}
    assert (classes[3:5, 3:5, 3:5] == NON_ENHANCING).all()
    rim, quiet, tiny = truth["lesions"]  # components, in label order
    assert rim["enhancing"] and rim["scored"] and rim["volume_mm3"] == 512.0
    assert not quiet["enhancing"] and quiet["type"] == "non-enhancing" and quiet["scored"]
    assert not tiny["scored"] and "smaller than one model voxel" in tiny["note"]


def test_lesion_truth_refuses_labels_that_are_not_lesion_classes(tmp_path):
    dseg = np.zeros((8, 8, 8))
    dseg[2:4, 2:4, 2:4] = 3  # BraTS 2023's enhancing label, not mapped
    with pytest.raises(InputError, match=r"labels \[3\] are not lesion classes"):
        lesion_truth_to_model_grid(write(tmp_path / "dseg.nii.gz", dseg), tmp_path / "c.nii.gz",
                                   tmp_path / "i.nii.gz", tmp_path / "l.json", (4, 4, 4))
    assert not (tmp_path / "c.nii.gz").exists()


def test_expert_labels_of_every_published_convention_give_the_same_classes(tmp_path):
    from cesynth.import_layouts import LAYOUTS

    dseg = np.zeros((16, 16, 16))
    variants = {name: variant for layout in LAYOUTS.values()
                for name, variant in layout["variants"].items()}
    results = {}
    for name, variant in variants.items():
        enhancing = variant["groups"]["enhancing"][0]
        dseg[:] = 0
        dseg[2:12, 2:12, 2:12] = 2
        dseg[4:10, 4:10, 4:10] = enhancing
        dseg[6:8, 6:8, 6:8] = 1
        sidecar = tmp_path / f"{name}.json"
        sidecar.write_text(json.dumps({"Labels": {"0": "background", **{
            str(value): label for value, label in variant["labels"].items()}}}))
        lesion_truth_to_model_grid(write(tmp_path / f"{name}.nii.gz", dseg),
                                   tmp_path / f"{name}_c.nii.gz", tmp_path / f"{name}_i.nii.gz",
                                   tmp_path / f"{name}_l.json", (8, 8, 8),
                                   dseg_sidecar_path=sidecar)
        results[name] = np.asarray(nib.load(tmp_path / f"{name}_c.nii.gz").dataobj)
    first = next(iter(results.values()))
    assert set(np.unique(first)) == {0, NON_ENHANCING, EDEMA, ENHANCING}
    assert all(np.array_equal(first, other) for other in results.values()), list(results)


def test_an_expert_label_with_an_unknown_name_stops(tmp_path):
    from cesynth.lesion_truth import classes_from_label_names

    with pytest.raises(InputError, match="label 7 .'tumor-ish'. is no lesion class"):
        classes_from_label_names({"7": "tumor-ish"}, "seg.json")


def test_a_subject_without_enhancement_truth_has_no_endpoints_and_a_note(tmp_path):
    subject = lesion_subject()
    files = write_subject(tmp_path, "s", subject, subject["cet1"])
    (tmp_path / "threshold.json").write_text(json.dumps(THRESHOLD))
    record = evaluate_subject(files["synthetic"], files["cet1"], files["mask"],
                              tmp_path / "m.json", subject="01", set_name="A", model="ours",
                              t1_path=files["t1"], threshold_path=tmp_path / "threshold.json")
    assert "enhancement" not in record
    assert any("no enhancement truth" in note for note in record["notes"])
    assert math.isnan(flatten_endpoints(record)["enh_auc"])


def test_brasyn_ssim_is_one_for_the_truth_and_ignores_intensity_outliers():
    subject = lesion_subject()
    tumor = subject["instances"] > 0
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
    subject = lesion_subject()
    erased = subject["cet1"].copy()
    erased[SOLID_LESION] = subject["t1"][SOLID_LESION]
    threshold = tmp_path / "threshold.json"
    threshold.write_text(json.dumps(THRESHOLD))
    jsons = []
    for model, synthetic in (("perfect", subject["cet1"]), ("eraser", erased)):
        for label in ("01", "02", "03"):
            files = write_subject(tmp_path, f"{model}{label}", subject, synthetic)
            out = tmp_path / f"{model}{label}.json"
            evaluate_subject(files["synthetic"], files["cet1"], files["mask"], out,
                             subject=label, set_name="A", model=model, t1_path=files["t1"],
                             threshold_path=threshold, classes_path=files["classes"],
                             instances_path=files["instances"],
                             lesion_sidecar_path=files["sidecar"])
            jsons.append(out)
    paths = tabulate_evaluation(jsons, tmp_path / "eval")
    metrics = pd.read_csv(paths["metrics"], sep="\t")
    assert set(metrics.loc[metrics["model"] == "eraser", "lesion_sensitivity"]) == {0.5}
    assert set(metrics.loc[metrics["model"] == "perfect", "enh_lesion_auc"]) == {1.0}
    assert (metrics["enh_threshold_source"] == "validation").all()
    summary = pd.read_csv(paths["summary"], sep="\t")
    assert {"enh_auc_ci_low", "enh_lesion_auc_mean",
            "enh_recovered_share_mean"} <= set(summary.columns)
    by_size = lesion_sensitivity_by_size(read_lesions(jsons))
    assert (by_size.loc[by_size["model"] == "perfect", "sensitivity"] == 1.0).all()
    tables = paths["tables"].read_text()
    assert "Enh. AUC" in tables and "Lesion AUC" in tables and "Recovered" in tables
    assert "| perfect | 0.2000 | validation |" in tables
    ttests = pd.read_csv(paths["ttests"], sep="\t")
    assert "enh_recovered_share" in set(ttests["metric"])
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


def test_lesion_panels_draw_every_lesion_type_zoomed(tmp_path):
    from cesynth.lesion_panels import choose_lesions, lesion_panels

    subject = lesion_subject()
    files = write_subject(tmp_path, "s", subject, subject["cet1"])
    panels = {"T1w": files["t1"], "truth": files["cet1"], "classes": files["classes"],
              "instances": files["instances"], "lesions_sidecar": files["sidecar"],
              "perfect": files["synthetic"]}
    chosen = choose_lesions({"sub-01": panels})
    assert sorted(lesion["type"] for _, lesion in chosen) == ["nonenhancing", "rim", "solid"]
    png = lesion_panels({"sub-01": panels}, ["perfect"], tmp_path / "lesions.png")
    assert png.stat().st_size > 5000


def test_validation_table_keeps_threshold_free_scores_only(tmp_path):
    from cesynth.validation_scores import SELECTION_COLUMNS, tabulate_validation

    subject = lesion_subject()
    brightened = subject["t1"] + 0.3 * subject["brain"]  # uniform brightening, no lesion contrast
    threshold = tmp_path / "threshold.json"
    threshold.write_text(json.dumps(THRESHOLD))
    jsons = []
    for model, synthetic in (("perfect", subject["cet1"]), ("brightened", brightened)):
        for label in ("01", "02"):
            files = write_subject(tmp_path, f"{model}{label}", subject, synthetic)
            out = tmp_path / f"{model}{label}.json"
            evaluate_subject(files["synthetic"], files["cet1"], files["mask"], out,
                             subject=label, set_name="validation", model=model,
                             t1_path=files["t1"], threshold_path=threshold,
                             classes_path=files["classes"], instances_path=files["instances"],
                             lesion_sidecar_path=files["sidecar"])
            jsons.append(out)
    paths = tabulate_validation(jsons, tmp_path / "validation")
    metrics = pd.read_csv(paths["metrics"], sep="\t")
    assert list(metrics.columns) == ["subject", "set", "model", *SELECTION_COLUMNS]
    summary = pd.read_csv(paths["summary"], sep="\t").set_index("model")
    assert (summary["set"] == "validation").all() and (summary["n"] == 2).all()
    assert summary.loc["perfect", "enh_lesion_auc_mean"] == 1.0
    assert summary.loc["perfect", "enh_recovered_share_mean"] == pytest.approx(1.0)
    assert summary.loc["brightened", "enh_lesion_auc_mean"] == pytest.approx(0.5)
    assert "lesion_sensitivity_mean" not in summary.columns  # in-sample at this threshold
