"""config/profiles/brats.yaml (issue 25): it validates against the schema, and the workflow plans
with it on a phantom cohort in the BraTS layout named as the twelve real cases (one without a
segmentation): import first, nothing registered, T1 and T2 as inputs, the declared split, the
expert labels as enhancement truth, the floors."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml
from helpers.workflow import REPO, dry_run_job_paths
from snakemake.utils import validate

from cesynth import importing, lesion_truth
from cesynth.io import read_json
from cesynth.phantom import PhantomSettings
from cesynth.phantom.layouts import write_layout_cohort

PROFILE = REPO / "config" / "profiles" / "brats.yaml"
SCHEMA = REPO / "config" / "config.schema.yaml"
UNLABELLED = "Brats18_CBICA_AVG_1"


def profile() -> dict:
    return yaml.safe_load(PROFILE.read_text())


def label(case: str) -> str:
    return case.replace("_", "")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Twelve coarse phantom cases in BraTS 2018's layout under the real cases' names, the
    unlabelled one without its segmentation."""
    root = tmp_path_factory.mktemp("brats") / "source"
    cases = list(profile()["sets"]["assigned"])
    folders = write_layout_cohort(root, "brats", len(cases), seed=3,
                                  settings=PhantomSettings(voxel_mm=6.0), naming="2017")
    for folder, case in zip(folders, cases, strict=True):
        renamed = folder.rename(root / case)
        for path in renamed.iterdir():
            path.rename(renamed / path.name.replace(folder.name, case))
    (root / UNLABELLED / f"{UNLABELLED}_seg.nii.gz").unlink()
    return root


def test_the_profile_validates_against_the_schema():
    config = profile()
    validate(copy.deepcopy(config), str(SCHEMA))  # a bad key or value raises
    assert config["train"]["modalities"] == ["T1w", "T2w"]
    assert config["ingest"] == {"coregistered": True, "skull_stripped": True}
    assert config["evaluation"]["floors"] == ["t1", "regression"]
    splits = list(config["sets"]["assigned"].values())
    assert (splits.count("train"), splits.count("validation"), splits.count("test")) == (8, 2, 2)
    assert config["sets"]["assigned"][UNLABELLED] == "train"
    # the learning curve's order lists every training patient once, and only those
    order = config["train"]["training_order"]
    assert sorted(order) == sorted(case for case, split in config["sets"]["assigned"].items()
                                   if split == "train")
    assert [config["experiments"][name]["training_subjects"]
            for name in ("subjects3", "subjects6")] == [3, 6]


def test_the_workflow_plans_the_cohort_as_the_profile_declares(source, tmp_path):
    overlay = tmp_path / "paths.yaml"
    overlay.write_text(yaml.safe_dump({"import_dir": str(source),
                                       "bids_dir": str(tmp_path / "bids"),
                                       "results_dir": str(tmp_path / "results")}))
    jobs = dry_run_job_paths(tmp_path, "--configfile", str(PROFILE), str(overlay))
    subjects: dict[str, set[str]] = {}
    for job in jobs:
        subjects.setdefault(job["rule"], set()).add(job["wildcards"].get("subject"))
    assigned = {label(case): split for case, split in profile()["sets"]["assigned"].items()}
    every = set(assigned)
    by_split = {split: {s for s, x in assigned.items() if x == split}
                for split in ("train", "validation", "test")}

    assert "import_dataset" in subjects and subjects["validate_subject"] == every
    # declared co-registered and skull-stripped: no ANTs, no brain extraction beyond the nonzero
    # region; no diffusion anywhere
    assert not {"register_anat_to_cet1w", "register_dwi_to_cet1w", "fit_adc",
                "convert_adc_map"} & set(subjects)
    modalities = {job["wildcards"]["modality"] for job in jobs
                  if job["rule"] == "coregistered_anat_to_cet1w"}
    assert modalities == {"T1w", "T2w", "FLAIR"}  # the FLAIR experiment takes it
    images = [job for job in jobs if job["rule"] == "check_image_quality"]
    assert len(images) == 4 * len(every)  # T1w, CE-T1, T2w, FLAIR of every case
    # the declared split: training and validation patients are cached, the test ones scored
    assert subjects["cache_training_subject"] == by_split["train"] | by_split["validation"]
    scored = {(job["wildcards"]["model"], job["wildcards"]["subject"]) for job in jobs
              if job["rule"] == "score_evaluation_subject"}
    models = ("default", "flair", "subjects3", "subjects6", "floor-t1", "floor-regression")
    assert scored == {(model, s) for model in models for s in by_split["test"]}
    # enhancement truth from the expert labels: test and validation patients (the thresholds)
    assert subjects["resample_enhancing_truth_to_model_grid"] == (
        by_split["test"] | by_split["validation"])
    assert "choose_enhancement_threshold" in subjects and "release_model" in subjects


def test_a_declared_split_naming_no_case_or_moving_set_b_stops_with_one_line(source, tmp_path):
    from helpers.workflow import snakemake

    for assigned, message in (
            ({"NoSuchCase_1": "train"}, "sets.assigned: NoSuchCase1: no such participant "
                                        "(of 12); name it by its label or public case ID"),
            ({"Brats18_2013_2_1": "validation"},
             "sets.assigned: Brats18201321: a Set B participant is always test, not "
             "validation")):
        overlay = tmp_path / "overlay.yaml"
        overlay.write_text(yaml.safe_dump({
            "import_dir": str(source), "bids_dir": str(tmp_path / "bids"),
            "results_dir": str(tmp_path / "results"), "import": {"set": "auto"},
            "sets": {"assigned": assigned}}))
        base = tmp_path / "base.yaml"
        config = profile()
        config["sets"]["assigned"] = {}
        base.write_text(yaml.safe_dump(config))
        result = snakemake(tmp_path, "--dry-run", "--configfile", str(base), str(overlay),
                           check=False)
        assert result.returncode == 1
        assert [line for line in result.stderr.splitlines() if "error" in line.lower()] == [
            f"error: config: {message}"]


def test_the_import_keeps_brats_2018_labels_and_the_truth_reads_them(source, tmp_path):
    one = tmp_path / "one"
    case = "Brats18_CBICA_AME_1"
    shutil.copytree(source / case, one / case)
    shutil.copytree(source / UNLABELLED, one / UNLABELLED)
    settings = profile()["import"]
    result = importing.import_layout(one, tmp_path / "bids", settings["layout"],
                                     tumor_labels=settings["tumor_labels"],
                                     set_mode=settings["set"])
    report = importing.import_report(result)
    assert report["set"] == {label(case): "A", label(UNLABELLED): "A"}
    assert report["labels_present"] == {label(case): [1, 2, 4]}  # the one with a segmentation
    sub = f"sub-{label(case)}"
    dseg = tmp_path / "bids" / "derivatives" / "tumor_masks" / sub / "anat"
    names = read_json(dseg / f"{sub}_desc-tumor_dseg.json")["Labels"]
    assert lesion_truth.classes_from_label_names(names, "dseg") == {
        0: 0, 1: lesion_truth.NON_ENHANCING, 2: lesion_truth.EDEMA, 4: lesion_truth.ENHANCING}
    assert read_json(dseg / f"{sub}_desc-tumor_mask.json")["TumorMaskLabels"] == [1, 4]
    assert not (tmp_path / "bids" / "derivatives" / "tumor_masks" / f"sub-{label(UNLABELLED)}"
                ).exists()
