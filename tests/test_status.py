"""The status table (qc/status.tsv, `cesynth status`): every scan x stage as done, failed (with
its one-line reason and log) or not run, from the files of a results folder alone; its path
templates checked against a dry run of the rules; its refresh at the end of a real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.bids_builder import add_subject, make_dataset
from helpers.workflow import CESYNTH, REPO, dry_run_job_paths, snakemake

from cesynth import ingest_report, phantom, splits, status
from cesynth.ingest import expected_scan
from cesynth.io import InputError, read_tsv

FULL = ("T1w", "ceT1w", "T2w", "dwi")


# --------------------------------------------------------------------------- a results folder


def labels_in(split: str, count: int = 1) -> list[str]:
    """Set A participant labels that the hash puts in ``split`` (default fractions)."""
    found = [f"{n:02d}" for n in range(1, 200) if splits.participant_split(f"{n:02d}") == split]
    return found[:count]


def included_report(results: Path, scan_id: str, set_name: str = "A",
                    modalities: tuple[str, ...] = FULL, tumor_mask: bool = False,
                    session: str | None = None) -> Path:
    """An included scan's ingest report, as validate_subject writes it (``scan_id`` is the
    participant label, with ``_ses-<session>`` when ``session`` is given)."""
    files = {m: {"file": f"sub-{scan_id}_{m}.nii.gz"} for m in modalities}
    if tumor_mask:
        files["tumor_mask"] = {"file": f"sub-{scan_id}_desc-tumor_mask.nii.gz"}
    participant = scan_id.removesuffix(f"_ses-{session}")
    report = {"scan_id": scan_id, "participant": participant, "session": session, "set": set_name,
              "status": "included", "modalities": list(modalities),
              "missing": [m for m in FULL if m not in modalities], "files": files}
    path = results / "qc" / "ingest" / f"sub-{scan_id}.json"
    ingest_report.write_scan_report(report, path)
    return path


def excluded_report(results: Path, scan_id: str, problem: str) -> Path:
    """An excluded scan's report and its job's log, as validate_subject leaves them."""
    scan = expected_scan(results / "bids", scan_id)
    error = InputError(f"sub-{scan_id}", problem)
    path = ingest_report.excluded_report_path(results / "qc" / "ingest" / f"sub-{scan_id}.json")
    ingest_report.write_scan_report(ingest_report.exclusion_report(scan, error), path)
    write_log(results, "validate_subject", f"error: sub-{scan_id}: {problem}", subject=scan_id)
    return path


def make_done(results: Path, rule: str, **wildcards: str) -> None:
    """A finished job: its outputs and a log ending with its done line."""
    outputs, _ = status.job_paths(rule, wildcards, results)
    for path in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            continue  # written already (an ingest report)
        if path.suffix:
            path.write_bytes(b"x")
        else:
            path.mkdir()  # a directory output (the training cache)
    write_log(results, rule, f"INFO cesynth: done: {rule} {wildcards}", **wildcards)


def write_log(results: Path, rule: str, last_line: str, **wildcards: str) -> Path:
    _, log = status.job_paths(rule, wildcards, results)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"2026-11-29 10:00:00,000 INFO cesynth: starting {rule}\n{last_line}\n")
    return log


def preprocess(results: Path, scan_id: str, modalities: tuple[str, ...] = FULL) -> None:
    """Every preprocessing job of a scan, finished."""
    make_done(results, "validate_subject", subject=scan_id)
    make_done(results, "mask_brain", subject=scan_id)
    make_done(results, "resample_mask_to_model_grid", subject=scan_id)
    make_done(results, "plot_qc_montage", subject=scan_id)
    grid = ["T1w", "ceT1w"]
    for modality in ("T1w", "T2w"):
        if modality in modalities:
            make_done(results, "register_anat_to_cet1w", subject=scan_id, modality=modality)
    if "T2w" in modalities:
        grid.append("T2w")
    if "dwi" in modalities:
        make_done(results, "fit_adc", subject=scan_id)
        make_done(results, "register_dwi_to_cet1w", subject=scan_id)
        grid.append("adc")
    for modality in grid:
        make_done(results, "normalise_to_model_grid", subject=scan_id, modality=modality)


def row(table, scan_id: str, stage: str) -> dict:
    (found,) = table[(table["scan_id"] == scan_id) & (table["stage"] == stage)].to_dict("records")
    return found


@pytest.fixture
def results(tmp_path):
    """Four scans: a training scan all done, one without DWI whose T2w registration failed,
    one excluded at ingest, and a Set B scan whose evaluation failed in scoring."""
    results = tmp_path / "results"
    train, other, excluded = labels_in("train", 3)
    included_report(results, train)
    preprocess(results, train)
    make_done(results, "cache_training_subject", subject=train)

    included_report(results, other, modalities=("T1w", "ceT1w", "T2w"))
    make_done(results, "validate_subject", subject=other)
    make_done(results, "register_anat_to_cet1w", subject=other, modality="T1w")
    write_log(results, "register_anat_to_cet1w",
              f"2026-11-29 10:00:01,000 ERROR cesynth: error: sub-{other}: sub-{other}_T2w.nii.gz:"
              " registration diverged", subject=other, modality="T2w")

    excluded_report(results, excluded, f"sub-{excluded}_dwi.bval: 6 b-values for 7 volumes")

    included_report(results, "90", set_name="B", tumor_mask=True)
    preprocess(results, "90")
    make_done(results, "resample_tumor_mask_to_model_grid", subject="90")
    make_done(results, "synthesize_evaluation_subject", subject="90", model="default",
              target="ceT1w")
    write_log(results, "score_evaluation_subject",
              "Traceback (most recent call last):\n  File \"x.py\", line 1\n"
              "ValueError: the mask is empty", subject="90", model="default")
    reports = sorted((results / "qc" / "ingest").glob("sub-*.json"))
    ingest_report.write_sets_table(reports, results / "ingest" / "sets.tsv")
    return {"dir": results, "train": train, "other": other, "excluded": excluded}


# --------------------------------------------------------------------------- the table


def test_every_scan_and_stage_is_done_failed_not_run_or_not_needed(results):
    table = status.status_table(results["dir"], models=["default"])
    train, other, excluded = results["train"], results["other"], results["excluded"]
    assert len(table) == 4 * len(status.STAGES)
    assert list(table["scan_id"]) == sorted(table["scan_id"])  # sorted by scan, then stage order
    assert list(table["stage"][: len(status.STAGES)]) == list(status.STAGES)

    for stage in ("ingest", "adc", "brainmask", "registration", "model_grid", "qc_montage",
                  "cache"):
        assert row(table, train, stage)["state"] == "done", stage
    assert row(table, train, "evaluation")["state"] == "not needed"  # a training scan
    assert row(table, train, "registration")["jobs"] == "3/3"
    assert row(table, train, "ingest")["split"] == "train"  # from ingest/sets.tsv

    failed = row(table, other, "registration")
    assert failed["state"] == "failed"
    assert failed["reason"] == f"sub-{other}: sub-{other}_T2w.nii.gz: registration diverged"
    assert failed["log"] == str(
        results["dir"] / "logs" / "register_anat_to_cet1w" / f"sub-{other}_T2w.log")
    assert failed["jobs"] == "1/2"
    assert row(table, other, "adc")["state"] == "not needed"  # no DWI: kept, no ADC
    assert row(table, other, "brainmask")["state"] == "not run"
    assert row(table, other, "model_grid")["jobs"] == "0/4"  # T1w, ceT1w, T2w and the mask

    ingest = row(table, excluded, "ingest")
    assert ingest["state"] == "failed"
    assert ingest["reason"] == f"sub-{excluded}: sub-{excluded}_dwi.bval: 6 b-values for 7 volumes"
    logs = results["dir"] / "logs"
    assert ingest["log"] == str(logs / "validate_subject" / f"sub-{excluded}.log")
    assert row(table, excluded, "brainmask")["state"] == "not run"
    assert row(table, excluded, "brainmask")["reason"] == "excluded at ingest"

    evaluation = row(table, "90", "evaluation")
    assert evaluation["state"] == "failed"
    assert evaluation["reason"] == "ValueError: the mask is empty"
    assert evaluation["jobs"] == "2/3"  # tumor mask and synthesis done, scoring failed
    assert row(table, "90", "cache")["state"] == "not needed"  # Set B is reported, not trained
    assert row(table, "90", "ingest")["split"] == "test"


def test_a_session_scan_has_its_bids_scan_id_in_rows_paths_and_report(tmp_path):
    results = tmp_path / "results"
    (participant,) = labels_in("train")
    scan_id = f"{participant}_ses-pre"
    included_report(results, scan_id, session="pre")
    preprocess(results, scan_id)
    write_log(results, "cache_training_subject", "ERROR cesynth: error: disk full",
              subject=scan_id)
    table = status.status_table(results, models=[])
    assert set(table["scan_id"]) == {scan_id}
    cache = row(table, scan_id, "cache")
    assert (cache["participant"], cache["session"], cache["state"]) == (participant, "pre",
                                                                       "failed")
    assert cache["log"] == str(results / "logs" / "cache_training_subject" / f"sub-{scan_id}.log")
    assert row(table, scan_id, "registration")["state"] == "done"
    assert (results / "preproc" / f"sub-{scan_id}" / "anat"
            / f"sub-{scan_id}_desc-brain_mask.nii.gz").is_file()
    assert f"sub-{scan_id}\tcache\t" in status.format_report(table)


def test_written_table_round_trips_and_counts_per_stage(results):
    written = status.write_status(results["dir"], models=["default"])
    table = read_tsv(results["dir"] / "qc" / "status.tsv")
    assert list(table.columns) == status.COLUMNS
    assert len(table) == len(written)
    assert not list((results["dir"] / "qc").glob(".status*"))  # no temporary file left
    counts = status.summary(written)
    assert counts.loc["ingest"].to_dict() == {"done": 3, "failed": 1, "not run": 0,
                                              "not needed": 0}
    assert counts.loc["registration", "failed"] == 1
    # the workflow records the models it evaluates; a later `cesynth status` follows them
    assert status.discover_models(results["dir"]) == ["default"]


def test_models_are_found_from_eval_folders_without_the_workflows_record(results):
    assert status.discover_models(results["dir"]) == ["default"]
    (results["dir"] / "eval" / "paper").mkdir()
    assert status.discover_models(results["dir"]) == ["default"]


def test_a_job_that_finished_but_lost_an_output_is_not_run_not_failed(results):
    train = results["train"]
    outputs, _ = status.job_paths("mask_brain", {"subject": train}, results["dir"])
    outputs[1].unlink()  # e.g. a sidecar a newer version of the rule declares
    found = row(status.status_table(results["dir"]), train, "brainmask")
    assert found["state"] == "not run"
    assert found["reason"] == f"outputs missing since it ran: sub-{train}_desc-brain_mask.json"


def test_a_log_without_outputs_or_error_is_a_killed_job(results):
    other = results["other"]
    write_log(results["dir"], "mask_brain", "INFO cesynth: masking", subject=other)
    found = row(status.status_table(results["dir"]), other, "brainmask")
    assert found["state"] == "failed"
    assert "killed" in found["reason"]


def test_a_later_error_after_an_earlier_success_is_the_reason(results):
    train = results["train"]
    outputs, log = status.job_paths("fit_adc", {"subject": train}, results["dir"])
    outputs[0].unlink()  # the rerun removed the outputs, then failed
    log.write_text(log.read_text() + f"ERROR cesynth: error: sub-{train}: all voxels zero\n")
    found = row(status.status_table(results["dir"]), train, "adc")
    assert (found["state"], found["reason"]) == ("failed", f"sub-{train}: all voxels zero")


def test_of_two_rules_that_make_the_same_files_the_newer_log_tells(tmp_path):
    """register_anat_to_cet1w, or coregistered_anat_to_cet1w for a dataset declared
    co-registered, make the same files: the log of the one that ran last gives the reason."""
    results = tmp_path / "results"
    included_report(results, "01", modalities=("T1w", "ceT1w", "adc"))
    old = write_log(results, "register_anat_to_cet1w", "ERROR cesynth: error: sub-01: diverged",
                    subject="01", modality="T1w")
    new = write_log(results, "coregistered_anat_to_cet1w",
                    "ERROR cesynth: error: sub-01: sub-01_T1w.nii.gz: not on the CE-T1 grid",
                    subject="01", modality="T1w")
    os.utime(old, (1_000_000, 1_000_000))
    table = status.status_table(results, models=[])
    found = row(table, "01", "registration")
    assert (found["state"], found["jobs"]) == ("failed", "0/2")  # T1w and the ADC map
    assert found["reason"] == "sub-01: sub-01_T1w.nii.gz: not on the CE-T1 grid"
    assert found["log"] == str(new)
    assert row(table, "01", "adc")["jobs"] == "0/1"  # a given map: converted, not fitted
    os.utime(new, (500_000, 500_000))
    found = row(status.status_table(results, models=[]), "01", "registration")
    assert (found["reason"], found["log"]) == ("sub-01: diverged", str(old))


def test_scans_not_validated_yet_are_listed_from_the_previous_table(results):
    status.write_status(results["dir"], scans=[status.ScanInfo("99", "99", None, "A", "train")])
    table = status.status_table(results["dir"])  # what `cesynth status` sees later
    assert row(table, "99", "ingest")["state"] == "not run"
    assert row(table, "99", "cache")["reason"] == "not validated yet"


def test_cascade_models_are_scored_only_where_the_real_image_exists():
    scan = status.ScanInfo("05", "05", None, "B", "test", ("T1w", "ceT1w", "dwi"), True)
    jobs = status.stage_jobs(scan, ["cascade-T2w", "default--cascade-T2w-adc"])["evaluation"]
    rules = [(job.rule, dict(job.wildcards).get("model")) for job in jobs]
    assert ("score_evaluation_subject", "cascade-T2w") not in rules
    # but the condition still needs the cascade's T2w, synthesized from the T1
    assert ("synthesize_evaluation_subject", "cascade-T2w") in rules
    assert rules[0] == ("resample_tumor_mask_to_model_grid", None)


def test_four_hundred_subjects_give_one_row_per_scan_and_stage(tmp_path):
    results = tmp_path / "results"
    for n in range(400):
        included_report(results, f"{n:03d}")
        make_done(results, "validate_subject", subject=f"{n:03d}")
    table = status.write_status(results, models=["default", "floor-t1"])
    assert len(table) == 400 * len(status.STAGES)
    assert (table[table["stage"] == "ingest"]["state"] == "done").all()


# --------------------------------------------------------------------------- the command line


def test_cli_writes_the_table_and_prints_counts_and_failed_rows(results):
    result = subprocess.run([CESYNTH, "status", "--results", str(results["dir"])],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (results["dir"] / "qc" / "status.tsv").is_file()
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["done", "failed", "not", "run", "not", "needed"]
    failed = [line for line in lines if line.startswith(f"sub-{results['other']}\t")]
    assert failed == [f"sub-{results['other']}\tregistration\tsub-{results['other']}: "
                      f"sub-{results['other']}_T2w.nii.gz: registration diverged\t"
                      f"{results['dir']}/logs/register_anat_to_cet1w/"
                      f"sub-{results['other']}_T2w.log"]
    assert "failed (3):" in result.stdout


def test_cli_check_exits_non_zero_with_one_line_when_a_stage_failed(results, capsys):
    from cesynth.cli import main

    assert main(["status", "--results", str(results["dir"]), "--check"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {results['dir']}: 3 of {4 * len(status.STAGES)} scan stages failed"]


def test_cli_check_passes_when_nothing_failed(tmp_path, capsys):
    from cesynth.cli import main

    results = tmp_path / "results"
    included_report(results, "01")
    make_done(results, "validate_subject", subject="01")
    assert main(["status", "--results", str(results), "--check"]) == 0
    assert "no failed stage" in capsys.readouterr().out


@pytest.mark.parametrize("make", [False, True])
def test_cli_errors_on_a_missing_or_empty_results_folder(tmp_path, make):
    results = tmp_path / "results"
    if make:
        results.mkdir()
    result = subprocess.run([CESYNTH, "status", "--results", str(results)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {results}: ")
    assert not (results / "qc" / "status.tsv").exists()


# --------------------------------------------------------------------------- against the rules


UNTRACKED_PER_SCAN = {"make_demo_subject", "make_demo_subject_set_b", "convert_dicom"}
FRACTIONS = splits.SplitFractions.from_config(
    yaml.safe_load((REPO / "config/config.yaml").read_text())["sets"])


def check_against_dry_run(jobs: list[dict], results_dir: str, scans: list[status.ScanInfo],
                          models: list[str]) -> None:
    per_scan: dict[str, set] = {scan.scan_id: set() for scan in scans}
    seen_rules = set()
    for job in jobs:
        if "subject" not in job["wildcards"] or job["rule"] in UNTRACKED_PER_SCAN:
            continue
        assert job["rule"] in status.JOB_PATHS, f"{job['rule']}: a per-scan rule status ignores"
        outputs, log = status.job_paths(job["rule"], job["wildcards"], results_dir)
        assert sorted(map(str, outputs)) == sorted(job["outputs"]), job["rule"]
        assert str(log) == job["log"], job["rule"]
        rule = status.ALTERNATIVES.get(job["rule"], job["rule"])  # the job status follows
        per_scan[job["wildcards"]["subject"]].add(
            status.Job(rule, tuple(sorted(job["wildcards"].items()))))
        seen_rules.add(job["rule"])
    for scan in scans:
        expected = {job for stage in status.stage_jobs(scan, models).values() for job in stage}
        assert expected == per_scan[scan.scan_id], scan.scan_id
    return seen_rules


def test_path_templates_and_jobs_match_a_dry_run_of_the_demo(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({
        "cascade": {"enabled": True},
        "evaluation": {"conditions": ["zero-T2w", "cascade-T2w-adc"],
                       "floors": ["t1", "regression"]}}))
    demo = yaml.safe_load((REPO / "config/profiles/demo-small.yaml").read_text())
    jobs = dry_run_job_paths(tmp_path, "--configfile",
                             str(REPO / "config/profiles/demo-small.yaml"), str(extra))
    plan = phantom.plan_cohort(demo["demo"]["subjects"], demo["demo"]["seed"],
                               demo["demo"]["set_b_subjects"])
    scans = []
    for participant, set_name in zip(plan["participant_id"], plan["set"], strict=True):
        label = participant.removeprefix("sub-")
        split = splits.scan_split(set_name, label, FRACTIONS)
        scans.append(status.ScanInfo(label, label, None, set_name, split, FULL, set_name == "B",
                                     phantom_truth=True))
    models = ["default", "default--zero-T2w", "default--cascade-T2w-adc", "floor-t1",
              "floor-regression", "cascade-T2w", "cascade-adc"]
    assert {s.split for s in scans} >= {"train", "test"}
    check_against_dry_run(jobs, demo["results_dir"], scans, models)


@pytest.mark.parametrize("coregistered", [False, True])
def test_jobs_match_a_dry_run_with_missing_modalities_and_sessions(tmp_path, coregistered):
    bids = make_dataset(tmp_path / "bids")
    # 01, 02, 06 train, 03 validation, 04 test (two sessions), 05 Set B (its tumor mask);
    # 06 has a given ADC map in place of the DWI
    present = {"01": FULL, "02": ("T1w", "ceT1w", "dwi"), "03": FULL,
               "05": ("T1w", "ceT1w", "T2w"), "06": ("T1w", "ceT1w", "T2w", "adc")}
    for label, modalities in present.items():
        for path in _zero_byte_subject(bids, label, modalities, tumor_mask=label == "05"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    for session in ("pre", "post"):
        for path in _zero_byte_subject(bids, "04", FULL, session=session):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "bids_dir": str(bids), "results_dir": str(tmp_path / "results"),
        "demo": {"enabled": False}, "cascade": {"enabled": True},
        "ingest": {"coregistered": coregistered},
        "evaluation": {"conditions": ["cascade-T2w-adc"], "floors": ["t1"]}}))
    jobs = dry_run_job_paths(tmp_path, "--configfile", str(config))
    scans = []
    for label, modalities in present.items():
        set_name = "B" if label == "05" else "A"
        scans.append(status.ScanInfo(label, label, None, set_name,
                                     splits.scan_split(set_name, label, FRACTIONS), modalities,
                                     label == "05"))
    for session in ("pre", "post"):
        scans.append(status.ScanInfo(f"04_ses-{session}", "04", session, "A",
                                     splits.scan_split("A", "04", FRACTIONS), FULL))
    models = ["default", "default--cascade-T2w-adc", "floor-t1", "cascade-T2w", "cascade-adc"]
    assert [scan.split for scan in scans] == ["train", "train", "validation", "test", "train",
                                              "test", "test"]
    rules = check_against_dry_run(jobs, str(tmp_path / "results"), scans, models)
    assert "convert_adc_map" in rules
    assert ("coregistered_anat_to_cet1w" in rules) == coregistered


def _zero_byte_subject(bids: Path, label: str, modalities, session=None, tumor_mask=False):
    entities = f"sub-{label}" + (f"_ses-{session}" if session else "")
    folder = bids / f"sub-{label}" / (f"ses-{session}" if session else "")
    names = {"T1w": "T1w", "ceT1w": "ce-gadolinium_T1w", "T2w": "T2w"}
    paths = [folder / "anat" / f"{entities}_{names[m]}.nii.gz" for m in modalities if m in names]
    if "dwi" in modalities:
        paths += [folder / "dwi" / f"{entities}_dwi{ext}" for ext in (".nii.gz", ".bval", ".bvec")]
    if "adc" in modalities:
        paths.append(folder / "dwi" / f"{entities}_adc.nii.gz")
    if tumor_mask:
        paths.append(bids / "derivatives" / "tumor_masks" / f"sub-{label}" / "anat"
                     / f"{entities}_desc-tumor_mask.nii.gz")
    return paths


@pytest.mark.slow
def test_a_real_run_refreshes_the_table_when_a_subject_fails(tmp_path):
    """A real run of the ingest stage: one valid subject, one with a bad .bval. The run fails;
    its end refreshes qc/status.tsv with the excluded subject's reason and log."""
    bids = make_dataset(tmp_path / "bids")
    add_subject(bids, "01", seed=1)
    bad = add_subject(bids, "02", seed=2)
    bad["bval"].write_text("0 500 1000\n")
    config = tmp_path / "config.yaml"
    results = tmp_path / "results"
    config.write_text(yaml.safe_dump({"bids_dir": str(bids), "results_dir": str(results),
                                      "demo": {"enabled": False}}))
    targets = [str(results / "qc" / "ingest" / f"sub-{s}.json") for s in ("01", "02")]
    run = snakemake(tmp_path, *targets, "--cores", "2", "--keep-going", "--configfile",
                    str(config), check=False)
    assert run.returncode != 0
    table = read_tsv(results / "qc" / "status.tsv")
    ingest = table[table["stage"] == "ingest"].set_index("scan_id")
    assert ingest.loc["01", "state"] == "done"
    assert ingest.loc["02", "state"] == "failed"
    assert ingest.loc["02", "reason"].startswith("sub-02: sub-02_dwi.bval: 3 b-values for 7")
    assert ingest.loc["02", "log"] == str(results / "logs" / "validate_subject" / "sub-02.log")
    later = table[(table["scan_id"] == "01") & (table["stage"] == "brainmask")]
    assert later["state"].tolist() == ["not run"]
    recorded = json.loads((results / "qc" / "status.json").read_text())
    assert recorded["evaluated_models"] == ["default"]


def test_the_status_module_imports_neither_snakemake_nor_torch_nor_mlflow():
    code = "import json, sys, cesynth.status; print(json.dumps(sorted(sys.modules)))"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                           text=True, check=True).stdout))
    assert "cesynth.status" in loaded
    assert not {"snakemake", "torch", "mlflow"} & loaded
