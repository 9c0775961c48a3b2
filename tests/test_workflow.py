"""The Snakemake workflow itself: lint, config validation, dry runs of the DAG on BIDS trees of
zero-byte files (one per input variant), and the schema's error messages."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.workflow import REPO, dry_run_jobs, snakemake

from cesynth.ingest import SCAN_ID_PATTERN


def touch_bids(root: Path, subjects: dict[str, set[str]],
               sessions: dict[str, list[str]] | None = None,
               participants_set: dict[str, str] | None = None, tumor_masks: tuple[str, ...] = ()):
    """A BIDS tree of zero-byte files: modalities per subject from {T1w, ce, T2w, FLAIR, dwi,
    adc, brainmask}."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.9"}))
    if participants_set:
        rows = "".join(f"sub-{s}\t{v}\n" for s, v in participants_set.items())
        (root / "participants.tsv").write_text("participant_id\tset\n" + rows)
    for subject, modalities in subjects.items():
        for session in (sessions or {}).get(subject, [None]):
            folder = root / f"sub-{subject}" / (f"ses-{session}" if session else "")
            prefix = f"sub-{subject}" + (f"_ses-{session}" if session else "")
            names = {"T1w": "anat/{p}_T1w.nii.gz", "ce": "anat/{p}_ce-gadolinium_T1w.nii.gz",
                     "T2w": "anat/{p}_T2w.nii.gz", "FLAIR": "anat/{p}_FLAIR.nii.gz"}
            for modality in modalities:
                if modality == "dwi":
                    for ext in (".nii.gz", ".bval", ".bvec"):
                        _touch(folder / "dwi" / f"{prefix}_dwi{ext}")
                elif modality == "adc":  # a given ADC map (published cohorts), no raw DWI
                    _touch(folder / "dwi" / f"{prefix}_adc.nii.gz")
                elif modality == "brainmask":  # the dataset's own brain mask
                    _touch(folder / "anat" / f"{prefix}_desc-brain_mask.nii.gz")
                else:
                    _touch(folder / names[modality].format(p=prefix))
    for subject in tumor_masks:
        _touch(root / "derivatives" / "tumor_masks" / f"sub-{subject}" / "anat"
               / f"sub-{subject}_desc-tumor_mask.nii.gz")
    return root


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


FULL = {"T1w", "ce", "T2w", "dwi"}


def bids_config(bids: Path, **overrides) -> list[str]:
    """Arguments that point the workflow at a BIDS tree (demo off), plus config overrides."""
    config = {"bids_dir": str(bids), "results_dir": str(bids.parent / "results"),
              "demo": {"enabled": False}, **overrides}
    path = bids.parent / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return ["--configfile", str(path)]


def test_lint_reports_nothing(tmp_path):
    result = snakemake(tmp_path, "--lint", "--configfile",
                       str(REPO / "config/profiles/demo-small.yaml"), check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Congratulations" in output, output


def test_dry_run_of_the_demo_dag_has_every_stage(tmp_path):
    jobs = dry_run_jobs(tmp_path, "--configfile", str(REPO / "config/profiles/demo-small.yaml"))
    subjects = 3
    assert jobs["make_demo_subject"] + jobs.get("make_demo_subject_set_b", 0) == subjects
    assert jobs["validate_subject"] == subjects
    assert jobs["fit_adc"] == subjects
    assert jobs["register_anat_to_cet1w"] == 2 * subjects
    assert jobs["register_dwi_to_cet1w"] == subjects
    assert jobs["mask_brain"] == subjects
    assert jobs["normalise_to_model_grid"] == 4 * subjects
    assert jobs["check_image_quality"] == 4 * subjects
    assert jobs["resample_mask_to_model_grid"] == subjects
    assert jobs["plot_qc_montage"] == subjects
    assert jobs["tabulate_qc"] == 5  # adc, registration, brainmask, normalise, images
    assert jobs["assign_sets"] == 1
    assert jobs["cache_training_subject"] == 2  # Set A; sub-03 is Set B (test only)
    assert jobs["train_trunk"] == 1 and jobs["train_model"] == 1


def test_experiments_fan_out_as_training_runs(tmp_path):
    config = tmp_path / "experiments.yaml"
    config.write_text(yaml.safe_dump({"experiments": {
        "default": {}, "modelB": {"model": "model_b"}, "local30": {"stages": [
            {"epochs": 1, "l1": 1.0, "l2": 1.0, "l3": 30.0, "lr": 1e-3}]}}}))
    jobs = dry_run_jobs(tmp_path, "--configfile", str(REPO / "config/profiles/demo-small.yaml"),
                        str(config))
    assert jobs["train_model"] == 3
    assert jobs["train_trunk"] == 2  # local30 has one stage: no trunk
    assert jobs["cache_training_subject"] == 2


def test_dry_run_on_a_bids_tree_with_missing_modalities(tmp_path):
    bids = touch_bids(tmp_path / "bids", {"01": FULL, "02": FULL - {"T2w"}, "03": FULL - {"dwi"}})
    jobs = dry_run_jobs(tmp_path, *bids_config(bids))
    assert "make_demo_subject" not in jobs
    assert jobs["validate_subject"] == 3
    assert jobs["fit_adc"] == 2  # sub-03 has no DWI but is kept
    assert jobs["register_dwi_to_cet1w"] == 2
    assert jobs["register_anat_to_cet1w"] == 3 + 2  # T1w for all, T2w where present
    assert jobs["normalise_to_model_grid"] == 4 + 3 + 3


def test_a_flair_is_an_input_only_where_a_model_takes_it(tmp_path):
    """FLAIR on disk but no model taking it: the plan is the one without it, and no job reads
    it. Declared (train.modalities or one experiment's): validated, registered to the CE-T1 and
    normalised like the T2, for every subject."""
    bids = touch_bids(tmp_path / "bids", {"01": FULL | {"FLAIR"}, "02": FULL | {"FLAIR"},
                                          "03": FULL - {"T2w"} | {"FLAIR"}})
    plain = touch_bids(tmp_path / "plain" / "bids", {"01": FULL, "02": FULL, "03": FULL - {"T2w"}})
    undeclared = dry_run_jobs(tmp_path, *bids_config(bids))
    assert undeclared == dry_run_jobs(tmp_path / "plain", *bids_config(plain))
    listed = job_inputs(tmp_path, *bids_config(bids))
    assert not any("_FLAIR" in path for jobs in listed.values() for job in jobs for path in job)

    with_flair = {"train": {"modalities": ["T1w", "T2w", "adc", "FLAIR"]}}
    as_experiment = {"experiments": {"default": {}, "flair": {
        "modalities": ["T1w", "T2w", "adc", "FLAIR"]}}}
    for declared in (with_flair, as_experiment):
        jobs = dry_run_jobs(tmp_path, *bids_config(bids, **declared))
        assert jobs["register_anat_to_cet1w"] == undeclared["register_anat_to_cet1w"] + 3
        assert jobs["normalise_to_model_grid"] == undeclared["normalise_to_model_grid"] + 3
        listed = job_inputs(tmp_path, *bids_config(bids, **declared))
        for rule in ("validate_subject", "register_anat_to_cet1w"):
            assert sum(any(path.endswith("_FLAIR.nii.gz") for path in job)
                       for job in listed[rule]) == 3, rule
        assert all(any("space-model_desc-norm_FLAIR" in path for path in job)
                   for job in listed["cache_training_subject"])


def test_the_demo_writes_a_flair_when_asked_and_plans_as_before(tmp_path):
    small = ("--configfile", str(REPO / "config/profiles/demo-small.yaml"))
    plain = dry_run_jobs(tmp_path, *small)
    asked = tmp_path / "asked.yaml"
    asked.write_text(yaml.safe_dump({"demo": {"flair": True}}))
    assert dry_run_jobs(tmp_path, *small, str(asked)) == plain
    written = job_inputs(tmp_path, *small, str(asked), field="output")
    demo = written["make_demo_subject"] + written["make_demo_subject_set_b"]
    assert all(any(path.endswith("_FLAIR.nii.gz") for path in job) for job in demo)
    written = job_inputs(tmp_path, *small, field="output")
    assert not any("_FLAIR" in path for jobs in written.values() for job in jobs for path in job)
    declared = tmp_path / "declared.yaml"
    declared.write_text(yaml.safe_dump({"train": {"modalities": ["T1w", "T2w", "FLAIR"]}}))
    jobs = dry_run_jobs(tmp_path, *small, str(declared))
    assert jobs["register_anat_to_cet1w"] == 3 * 3 and jobs["normalise_to_model_grid"] == 5 * 3


ADC_MAP_ONLY = FULL - {"dwi"} | {"adc"}


def test_a_scan_with_only_an_adc_map_converts_it_and_fits_nothing(tmp_path):
    bids = touch_bids(tmp_path / "bids", {"01": FULL, "02": ADC_MAP_ONLY,
                                          "03": FULL | {"adc"}})  # the DWI wins over a map
    jobs = dry_run_jobs(tmp_path, *bids_config(bids))
    assert jobs["fit_adc"] == 2  # sub-01 and sub-03
    assert jobs["convert_adc_map"] == 1  # sub-02
    assert jobs["register_dwi_to_cet1w"] == 3  # b0 for 01 and 03, the map itself for 02
    assert jobs["normalise_to_model_grid"] == 4 * 3
    listed = job_inputs(tmp_path, *bids_config(bids))
    (convert,) = listed["convert_adc_map"]
    assert any(p.endswith("sub-02_adc.nii.gz") for p in convert)
    (map_job,) = [job for job in listed["register_dwi_to_cet1w"]
                  if any("sub-02_adc.nii.gz" in p for p in job)]
    assert not any("_dwi." in p for p in map_job)  # the map itself is registered


def test_declared_coregistered_schedules_no_ants_registration(tmp_path):
    bids = touch_bids(tmp_path / "bids", {"01": FULL, "02": ADC_MAP_ONLY, "03": FULL - {"T2w"}})
    jobs = dry_run_jobs(tmp_path, *bids_config(bids, ingest={"coregistered": True}))
    assert "register_anat_to_cet1w" not in jobs and "register_dwi_to_cet1w" not in jobs
    assert jobs["coregistered_anat_to_cet1w"] == 3 + 2
    assert jobs["coregistered_adc_to_cet1w"] == 3
    assert jobs["fit_adc"] == 2 and jobs["convert_adc_map"] == 1
    assert jobs["normalise_to_model_grid"] == 4 + 4 + 3


def test_declared_skull_stripped_masks_take_the_datasets_own_mask(tmp_path):
    bids = touch_bids(tmp_path / "bids", {"01": FULL | {"brainmask"}, "02": FULL})
    listed = job_inputs(tmp_path, *bids_config(bids, ingest={"skull_stripped": True}))
    assert sum(any(p.endswith("sub-01_desc-brain_mask.nii.gz") for p in job)
               for job in listed["mask_brain"]) == 1
    # not declared: the dataset's mask is not an input of anything
    listed = job_inputs(tmp_path, *bids_config(bids))
    assert not any(p.endswith("_desc-brain_mask.nii.gz") and "/bids/" in p
                   for jobs in listed.values() for job in jobs for p in job)


def test_dry_run_with_sessions_makes_one_scan_per_session(tmp_path):
    bids = touch_bids(tmp_path / "bids", {"01": FULL, "02": FULL},
                      sessions={"01": ["pre", "post"]})
    jobs = dry_run_jobs(tmp_path, *bids_config(bids))
    assert jobs["validate_subject"] == 3
    result = snakemake(tmp_path, "--dry-run", *bids_config(bids))
    preproc = tmp_path / "results" / "preproc"
    for scan_id in ("01_ses-pre", "01_ses-post"):  # BIDS entities: sub-01_ses-pre
        mask = preproc / f"sub-{scan_id}" / "anat" / f"sub-{scan_id}_desc-brain_mask.nii.gz"
        assert str(mask) in result.stdout
        assert f"wildcards: subject={scan_id}" in result.stdout
    assert "wildcards: subject=02" in result.stdout  # no sessions: the participant label
    assert "sub-01ses" not in result.stdout


def test_a_session_scan_is_excluded_by_its_scan_id(tmp_path):
    bids = touch_bids(tmp_path / "bids", {"01": FULL}, sessions={"01": ["pre", "post"]})
    excluded = bids_config(bids, ingest={"exclude_subjects": ["01_ses-post"]})
    assert dry_run_jobs(tmp_path, *excluded)["validate_subject"] == 1
    too_loose = bids_config(bids, ingest={"exclude_subjects": ["01_run-1"]})
    result = snakemake(tmp_path, "--dry-run", *too_loose, check=False)
    assert result.returncode != 0 and "01_run-1" in result.stdout + result.stderr


def test_excluded_subjects_are_left_out(tmp_path):
    bids = touch_bids(tmp_path / "bids", {"01": FULL, "02": FULL, "03": FULL})
    jobs = dry_run_jobs(tmp_path, *bids_config(bids, ingest={"exclude_subjects": ["02"]}))
    assert jobs["validate_subject"] == 2


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"demo": {"enabled": True, "subjectz": 3}}, "subjectz"),
        ({"demo": {"enabled": True, "voxel_mm": -1}}, "voxel_mm"),
        ({"brainmask": {"method": "magic"}}, "magic"),
        ({"brainmask": {"reference": "T2w"}}, "T2w"),
        ({"model_grid": {"shape": [64, 64]}}, "shape"),
        ({"train": {"model": "resnet"}}, "resnet"),
        ({"experiments": {"bad": {"lr": 1}}}, "lr"),
        ({"unknown_key": 1}, "unknown_key"),
    ],
)
def test_a_bad_config_key_or_value_stops_with_a_message_naming_it(tmp_path, override, named):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(override))
    result = snakemake(tmp_path, "--dry-run", "--configfile", str(config), check=False)
    assert result.returncode != 0
    assert named in result.stdout + result.stderr


def test_a_folder_that_is_not_bids_stops_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = snakemake(tmp_path, "--dry-run", *bids_config(tmp_path / "empty"), check=False)
    assert result.returncode != 0
    assert "not a BIDS dataset" in result.stdout + result.stderr


def test_python_code_passes_ruff():
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run([str(ruff), "check", "src", "tests", "workflow_scripts", "benchmarks",
                             "docs"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_rules_pass_snakefmt_in_the_projects_directive_order():
    snakefmt = Path(sys.executable).parent / "snakefmt"
    result = subprocess.run([str(snakefmt), "--check", "Snakefile", "rules"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def job_inputs(workdir: Path, *args: str, field: str = "input") -> dict[str, list[set[str]]]:
    """Rule -> the input (or ``field``: output) files of each of its jobs, from a dry run's job
    listing."""
    result = snakemake(workdir, "--dry-run", *args)
    jobs: dict[str, list[set[str]]] = {}
    rule = None
    for line in result.stdout.splitlines():
        stripped = line.strip()
        if stripped.startswith(("rule ", "localrule ")) and stripped.endswith(":"):
            rule = stripped.split()[1].rstrip(":")
            jobs.setdefault(rule, []).append(set())
        elif stripped.startswith(f"{field}:") and rule is not None:
            jobs[rule][-1].update(p.strip() for p in stripped[len(field) + 1:].split(","))
    return jobs


def test_no_reported_subject_is_seen_by_training_or_selection(tmp_path):
    from cesynth.ingest import discover_bids
    from cesynth.splits import SplitFractions, assign_splits

    participants = [f"{i:02d}" for i in range(24)]
    sessions = {p: ["pre", "post"] for p in participants[:8]}
    tumor_in_one_session = participants[:2]  # sessions of a Set B participant stay together
    bids = touch_bids(tmp_path / "bids", dict.fromkeys(participants, FULL), sessions=sessions,
                      tumor_masks=participants[10:13])
    for participant in tumor_in_one_session:
        _touch(bids / "derivatives" / "tumor_masks" / f"sub-{participant}" / "ses-post" / "anat"
               / f"sub-{participant}_ses-post_desc-tumor_mask.nii.gz")
    sweeps = {"lossweights": {"stage2": [[1, 10]]}}
    jobs = job_inputs(tmp_path, *bids_config(bids, sweeps=sweeps,
                                             evaluation={"floors": ["regression"]}))
    table = assign_splits(discover_bids(bids), SplitFractions(0.1, 0.35)).set_index("scan_id")
    reported = set(table.index[table["split"] == "test"])
    validation = set(table.index[table["split"] == "validation"])
    set_b = {"00_ses-pre", "00_ses-post", "01_ses-pre", "01_ses-post", "10", "11", "12"}
    assert reported >= set_b
    assert reported - set_b
    assert validation
    seen = {rule: set().union(*inputs) for rule, inputs in jobs.items()}
    fitted = seen["train_trunk"] | seen["train_model"] | seen["fit_voxel_regression"]
    fitted_scans = {_scan_of(path) for path in fitted} - {None}
    assert fitted_scans and not fitted_scans & reported
    assert {_scan_of(p) for p in seen["fit_voxel_regression"]} - {None} <= set(
        table.index[table["split"] == "train"])
    scored = {_scan_of(p) for p in seen["score_evaluation_subject"]} - {None}
    assert scored == reported  # validation subjects select; they are never reported


def _scan_of(path: str) -> str | None:
    """The scan ID of an output path (``sub-<scan_id>`` folder or file-name prefix)."""
    for part in Path(path).parts:
        found = re.match(rf"sub-({SCAN_ID_PATTERN})(?![A-Za-z0-9-])", part)
        if found:
            return found.group(1)
    return None


def test_a_declared_sweep_fans_out_and_stage_two_points_share_stage_one(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({
        "sweeps": {"lossweights": {"stage2": [[1, 10], [1, 30], [0.1, 10]]},
                   "delta": {"delta": [0.05]}, "models": {"model": ["model_b", "unet2d"]}},
        "cascade": {"enabled": True},
        "evaluation": {"conditions": ["zero-adc", "cascade-T2w-adc"], "floors": ["t1"]}}))
    args = ("--configfile", str(REPO / "config/profiles/demo-small.yaml"), str(config))
    jobs = dry_run_jobs(tmp_path, *args)
    # default (= lossweights 0.1x10), 1x10, 1x30, delta, 2 models, 2 cascade models
    assert jobs["train_model"] == 8
    # one shared trunk for the three loss-weight points; delta, each model, each cascade own one
    assert jobs["train_trunk"] == 1 + 1 + 2 + 2
    inputs = job_inputs(tmp_path, *args)
    trunks = [path for job in inputs["train_model"] for path in job if "/trunks/" in path]
    assert len(trunks) == 8 and len(set(trunks)) == 6
    assert jobs["synthesize_input_condition"] == 2  # 2 conditions x 1 reported subject
    assert jobs["synthesize_floor"] == 1
    assert jobs["tabulate_paper"] == 1
    names = {p.split("/eval/")[1].split("/")[0] for job in inputs["score_evaluation_subject"]
             for p in job if "/eval/" in p}
    assert {"default", "lossweights-1x10", "lossweights-1x30", "delta-0p05", "models-modelb",
            "models-unet2d", "default--zero-adc", "default--cascade-T2w-adc", "floor-t1",
            "cascade-T2w", "cascade-adc"} == names


def test_declared_seeds_fan_out_every_configuration_with_per_seed_trunks(tmp_path):
    config = tmp_path / "seeds.yaml"
    config.write_text(yaml.safe_dump({
        "sweeps": {"lossweights": {"stage2": [[1, 10]]}, "models": {"model": ["model_b"]}},
        "cascade": {"enabled": True},
        "evaluation": {"seeds": [0, 1, 2], "conditions": ["zero-adc", "cascade-T2w-adc"],
                       "floors": ["t1"]}}))
    args = ("--configfile", str(REPO / "config/profiles/demo-small.yaml"), str(config))
    jobs = dry_run_jobs(tmp_path, *args)
    # 3 configurations (default = lossweights 0.1x10, lossweights-1x10, models-modelb) x 3
    # seeds, and the 2 cascade models once (first seed)
    assert jobs["train_model"] == 3 * 3 + 2
    # per seed: one trunk for the loss-weight points, one for model_b; 2 cascade trunks
    assert jobs["train_trunk"] == 2 * 3 + 2
    inputs = job_inputs(tmp_path, *args)
    trunks = {path for job in inputs["train_model"] for path in job if "/trunks/" in path}
    assert len(trunks) == 8
    configurations = ("default", "lossweights-1x10", "models-modelb")
    runs = {f"{c}{s}" for c in configurations for s in ("", "-seed1", "-seed2")}
    conditions = {f"default{s}--{c}" for s in ("", "-seed1", "-seed2")
                  for c in ("zero-adc", "cascade-T2w-adc")}
    assert jobs["synthesize_evaluation_subject"] == len(runs) + 2  # + cascade, 1 subject
    assert jobs["synthesize_input_condition"] == len(conditions)
    names = {p.split("/eval/")[1].split("/")[0] for job in inputs["score_evaluation_subject"]
             for p in job if "/eval/" in p}
    assert names == runs | conditions | {"floor-t1", "cascade-T2w", "cascade-adc"}
    assert jobs["tabulate_evaluation"] == 1 and jobs["tabulate_paper"] == 1
    # no seeds declared: today's DAG, nothing named -seed
    plain = dry_run_jobs(tmp_path, "--configfile", str(REPO / "config/profiles/demo-small.yaml"))
    assert plain["train_model"] == 1 and plain["train_trunk"] == 1


def test_the_paper_profile_declares_the_papers_grids(tmp_path):
    """Tables I, III, V and Figs. 7, 9, 10 as declared in config/profiles/paper.yaml."""
    cohort = tmp_path / "cohort.yaml"
    cohort.write_text(yaml.safe_dump({"demo": {"enabled": True, "subjects": 12,
                                               "set_b_subjects": 3},
                                      "bids_dir": str(tmp_path / "bids")}))
    jobs = dry_run_jobs(tmp_path, "--configfile", str(REPO / "config/profiles/paper.yaml"),
                        str(cohort))
    # reference + 7 models + 2 inputs + 4 loss-weight pairs + 7 deltas + 2 cascade models
    assert jobs["train_model"] == 1 + 7 + 2 + 4 + 7 + 2
    # the four extra loss-weight points fine-tune from the reference's stage 1
    assert jobs["train_trunk"] == jobs["train_model"] - 4


@pytest.mark.parametrize(("reference", "image"), [("T1w", "space-ceT1w_T1w.nii.gz"),
                                                  ("ceT1w", "ce-gadolinium_T1w.nii.gz")])
def test_brain_masks_are_made_from_the_configured_reference(tmp_path, reference, image):
    bids = touch_bids(tmp_path / "bids", {"01": FULL, "02": FULL, "03": FULL, "04": FULL})
    jobs = job_inputs(tmp_path, *bids_config(bids, brainmask={"reference": reference}))
    for inputs in jobs["mask_brain"]:
        (made_from,) = [p for p in inputs if p.endswith(".nii.gz")]
        assert made_from.endswith(image), made_from
    assert len(jobs["mask_brain"]) == 4  # the same jobs whichever the reference
    # training reads the mask sidecars of the subjects it reads (train and validation), to
    # record the method that ran
    (trunk,) = jobs["train_trunk"]
    masked = {Path(p).name.removesuffix("_desc-brain_mask.json") for p in trunk
              if p.endswith("_desc-brain_mask.json")}
    assert masked and masked == {Path(p).name for p in trunk if "/train/cache/" in p}


def _resources_by_rule(workdir: Path, *args: str) -> dict[str, dict[str, str]]:
    """The resources line of the first job of each rule in a dry run."""
    result = snakemake(workdir, "--dry-run", *args)
    resources, rule = {}, None
    for line in result.stdout.splitlines():
        line = line.strip()
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif line.startswith("resources:") and rule and rule not in resources:
            pairs = (item.split("=", 1) for item in line.removeprefix("resources:").split(", "))
            resources[rule] = {key.strip(): value for key, value in pairs}
    return resources


def test_a_retry_asks_for_more_memory_and_time_and_cuda_asks_for_gpus(tmp_path):
    small = ["--configfile", str(REPO / "config/profiles/demo-small.yaml")]
    first = _resources_by_rule(tmp_path, *small)
    second = _resources_by_rule(tmp_path, *small, "--attempt", "2")
    for rule in ("fit_adc", "register_anat_to_cet1w", "train_model", "score_evaluation_subject"):
        for resource in ("mem_mb", "runtime"):
            assert int(second[rule][resource]) == 2 * int(first[rule][resource]), rule
    assert first["train_model"]["gpu"] == first["synthesize_evaluation_subject"]["gpu"] == "0"
    cuda = _resources_by_rule(tmp_path, *small, "--config", "train={'device': 'cuda'}")
    assert cuda["train_trunk"]["gpu"] == cuda["train_model"]["gpu"] == "1"
    assert cuda["synthesize_evaluation_subject"]["gpu"] == "1"
    assert "gpu" not in cuda["fit_adc"]
