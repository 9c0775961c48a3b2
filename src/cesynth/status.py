"""The status table: every scan x stage as done, failed (with its reason and log) or not run.

Built from the files in a results folder alone (no Snakemake import, no config needed), so
``cesynth status --results DIR`` tells where a run stands after it ended, failed or was killed,
and the workflow refreshes the same table (``qc/status.tsv``) at the end of every run.

A stage of a scan is one or more pipeline jobs (the registration stage of a full scan is three:
T1w, T2w and the DWI). A job is *done* when every output it declares exists; *failed* when its
log exists but its outputs do not (the reason is the job's one-line ``error: ...`` line, else the
last line of its log); *not run* otherwise. A stage is failed when any of its jobs failed, done
when all are done, not run otherwise, and *not needed* when none of its jobs applies to the scan
(the ADC of a scan without DWI, the training cache of a reported scan, the evaluation of a
training scan). A validation scan's evaluation stage is the syntheses that choose each CE-T1
model's enhancement threshold, never scored. Beside its state, each scan and stage carries the
QC flags its gathered QC table sets (``qc_flags``: a saturated CE-T1, a T2w resampled from
thick slices), so a stage can be done and still need a look.

The path templates below are the rules' outputs and logs relative to the results folder; a test
checks them against a dry run of the workflow, so they cannot drift from the rules silently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from cesynth.io import MESSAGE_CHARS, read_tsv, write_json, write_tsv

STATUS_TSV = "qc/status.tsv"
"""The table, relative to the results folder."""
STATUS_JSON = "qc/status.json"
"""What the workflow knew at its last refresh (the evaluated models), relative to results."""

DONE, FAILED, NOT_RUN, NOT_NEEDED = "done", "failed", "not run", "not needed"
STATES = (DONE, FAILED, NOT_RUN, NOT_NEEDED)
STAGES = ("ingest", "adc", "brainmask", "registration", "image_qc", "model_grid", "qc_montage",
          "cache", "evaluation")
"""The per-scan stages, in pipeline order."""
COLUMNS = ["scan_id", "participant", "session", "set", "split", "stage", "state", "jobs",
           "reason", "log", "qc_flags"]

QC_TABLES = {"qc/adc.tsv": "adc", "qc/brainmask.tsv": "brainmask",
             "qc/registration.tsv": "registration", "qc/images.tsv": "image_qc",
             "qc/normalise.tsv": "model_grid"}
"""The gathered QC tables (relative to results) whose flags the table shows, by stage."""

_ANAT = "preproc/sub-{subject}/anat/sub-{subject}"
_SYNTHETIC = "eval/{model}/sub-{subject}/sub-{subject}_space-model_desc-synthetic_{target}"


@dataclass(frozen=True)
class JobPaths:
    """A rule's outputs and log, relative to the results folder, with its wildcards in braces."""

    outputs: tuple[str, ...]
    log: str


JOB_PATHS: dict[str, JobPaths] = {
    "validate_subject": JobPaths(
        ("qc/ingest/sub-{subject}.json",), "logs/validate_subject/sub-{subject}.log"),
    "fit_adc": JobPaths(
        ("preproc/sub-{subject}/dwi/sub-{subject}_adc.nii.gz", "qc/adc/sub-{subject}.tsv"),
        "logs/fit_adc/sub-{subject}.log"),
    "convert_adc_map": JobPaths(
        ("preproc/sub-{subject}/dwi/sub-{subject}_adc.nii.gz", "qc/adc/sub-{subject}.tsv"),
        "logs/convert_adc_map/sub-{subject}.log"),
    "mask_brain": JobPaths(
        (f"{_ANAT}_desc-brain_mask.nii.gz", f"{_ANAT}_desc-brain_mask.json",
         "qc/brainmask/sub-{subject}.tsv"),
        "logs/mask_brain/sub-{subject}.log"),
    "register_anat_to_cet1w": JobPaths(
        (f"{_ANAT}_space-ceT1w_{{modality}}.nii.gz", f"{_ANAT}_from-{{modality}}_to-ceT1w_xfm.mat",
         "qc/registration/sub-{subject}_{modality}.tsv"),
        "logs/register_anat_to_cet1w/sub-{subject}_{modality}.log"),
    "register_dwi_to_cet1w": JobPaths(
        (f"{_ANAT}_space-ceT1w_adc.nii.gz", f"{_ANAT}_from-dwi_to-ceT1w_xfm.mat",
         "qc/registration/sub-{subject}_dwi.tsv"),
        "logs/register_dwi_to_cet1w/sub-{subject}.log"),
    "coregistered_anat_to_cet1w": JobPaths(
        (f"{_ANAT}_space-ceT1w_{{modality}}.nii.gz", f"{_ANAT}_from-{{modality}}_to-ceT1w_xfm.mat",
         "qc/registration/sub-{subject}_{modality}.tsv"),
        "logs/coregistered_anat_to_cet1w/sub-{subject}_{modality}.log"),
    "coregistered_adc_to_cet1w": JobPaths(
        (f"{_ANAT}_space-ceT1w_adc.nii.gz", f"{_ANAT}_from-dwi_to-ceT1w_xfm.mat",
         "qc/registration/sub-{subject}_dwi.tsv"),
        "logs/coregistered_adc_to_cet1w/sub-{subject}.log"),
    "resample_mask_to_model_grid": JobPaths(
        (f"{_ANAT}_space-model_desc-brain_mask.nii.gz",
         f"{_ANAT}_space-model_desc-brain_mask.json"),
        "logs/resample_mask_to_model_grid/sub-{subject}.log"),
    "normalise_to_model_grid": JobPaths(
        (f"{_ANAT}_space-model_desc-norm_{{modality}}.nii.gz",
         "qc/normalise/sub-{subject}_{modality}.tsv"),
        "logs/normalise_to_model_grid/sub-{subject}_{modality}.log"),
    "check_image_quality": JobPaths(
        ("qc/images/sub-{subject}_{modality}.tsv",),
        "logs/check_image_quality/sub-{subject}_{modality}.log"),
    "plot_qc_montage": JobPaths(
        ("qc/sub-{subject}/sub-{subject}_desc-montage.png",),
        "logs/plot_qc_montage/sub-{subject}.log"),
    "cache_training_subject": JobPaths(
        ("train/cache/sub-{subject}",), "logs/cache_training_subject/sub-{subject}.log"),
    "resample_tumor_mask_to_model_grid": JobPaths(
        (f"{_ANAT}_space-model_desc-tumor_mask.nii.gz",),
        "logs/resample_tumor_mask_to_model_grid/sub-{subject}.log"),
    "synthesize_evaluation_subject": JobPaths(
        (f"{_SYNTHETIC}.nii.gz", f"{_SYNTHETIC}.json"),
        "logs/synthesize_evaluation_subject/{model}_sub-{subject}_{target}.log"),
    "synthesize_input_condition": JobPaths(
        tuple(p.replace("{model}", "{experiment}--{condition}").replace("{target}", "ceT1w")
              for p in (f"{_SYNTHETIC}.nii.gz", f"{_SYNTHETIC}.json")),
        "logs/synthesize_input_condition/{experiment}--{condition}_sub-{subject}.log"),
    "synthesize_floor": JobPaths(
        tuple(p.replace("{model}", "floor-{floor}").replace("{target}", "ceT1w")
              for p in (f"{_SYNTHETIC}.nii.gz", f"{_SYNTHETIC}.json")),
        "logs/synthesize_floor/{floor}_sub-{subject}.log"),
    "resample_enhancing_truth_to_model_grid": JobPaths(
        (f"{_ANAT}_space-model_desc-lesion_dseg.nii.gz",
         *(f"{_ANAT}_space-model_desc-lesions_dseg{ext}" for ext in (".nii.gz", ".json"))),
        "logs/resample_enhancing_truth_to_model_grid/sub-{subject}.log"),
    "score_evaluation_subject": JobPaths(
        ("eval/{model}/sub-{subject}/sub-{subject}_metrics.json",),
        "logs/score_evaluation_subject/{model}_sub-{subject}.log"),
    "score_validation_subject": JobPaths(
        ("eval/validation/{model}/sub-{subject}_metrics.json",),
        "logs/score_validation_subject/{model}_sub-{subject}.log"),
}
"""Every per-scan rule the table follows. Per-scan rules it leaves out on purpose: the demo
cohort's (``make_demo_subject*``) and DICOM conversion (``convert_dicom``), which make inputs."""

ALTERNATIVES: dict[str, str] = {
    "coregistered_anat_to_cet1w": "register_anat_to_cet1w",
    "coregistered_adc_to_cet1w": "register_dwi_to_cet1w",
}
"""Rules that make another rule's outputs when the config says so (``ingest.coregistered``):
the table, which reads no config, follows the other rule's job and reads the newer of the two
logs."""

# evaluated model names (cesynth.experiments' conventions)
_CASCADE_PREFIX = "cascade-"
_FLOOR_PREFIX = "floor-"
_VARIANT_SEPARATOR = "--"
_TRAINING_SPLITS = ("train", "validation")
_SELECTION_SPLITS = ("validation",)
_REPORTED_SPLITS = ("test",)
_LOG_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class Job:
    """One pipeline job: its rule and wildcard values (``subject`` included)."""

    rule: str
    wildcards: tuple[tuple[str, str], ...]

    def paths(self, results_dir: str | os.PathLike) -> tuple[list[str], str]:
        """Its output paths and its log path under ``results_dir``, as strings (cheap)."""
        template, wildcards = JOB_PATHS[self.rule], dict(self.wildcards)
        root = os.fspath(results_dir)
        return ([f"{root}/{p.format(**wildcards)}" for p in template.outputs],
                f"{root}/{template.log.format(**wildcards)}")

    def logs(self, results_dir: str | os.PathLike) -> list[str]:
        """Its log, then those of the rules that make the same outputs in another setting."""
        wildcards, root = dict(self.wildcards), os.fspath(results_dir)
        rules = [self.rule] + [alt for alt, rule in ALTERNATIVES.items() if rule == self.rule]
        return [f"{root}/{JOB_PATHS[rule].log.format(**wildcards)}" for rule in rules]


class FileIndex:
    """Which files exist, from one listing per folder: far cheaper than a stat per file when
    hundreds of scans share folders (``qc/registration``) or each has a few."""

    def __init__(self) -> None:
        self._folders: dict[str, frozenset[str]] = {}

    def exists(self, path: str) -> bool:
        folder, name = os.path.split(path)
        names = self._folders.get(folder)
        if names is None:
            try:
                names = frozenset(os.listdir(folder or "."))
            except OSError:
                names = frozenset()
            self._folders[folder] = names
        return name in names


def job_paths(rule: str, wildcards: Mapping[str, str],
              results_dir: str | os.PathLike) -> tuple[list[Path], Path]:
    """A rule's outputs and log for one job, from :data:`JOB_PATHS`.

    Args:
        rule: the rule name.
        wildcards: its wildcard values (``subject`` is the scan ID).
        results_dir: the results folder.

    Returns:
        (output paths, log path).
    """
    template = JOB_PATHS[rule]
    root = Path(results_dir)
    return ([root / p.format(**wildcards) for p in template.outputs],
            root / template.log.format(**wildcards))


@dataclass(frozen=True)
class ScanInfo:
    """What the table needs to know of a scan.

    ``modalities`` (from ``T1w``, ``ceT1w``, ``T2w``, ``dwi``, ``adc`` for a given ADC map in
    place of the DWI, and ``FLAIR`` where a model takes it) is None while the scan has not been
    validated; ``excluded`` is the reason its validation gave, when it failed;
    ``corrupt_record`` what is wrong with its ingest report when that cannot be read (truncated,
    not a report); ``phantom_truth``: the scan has enhancement truth (the phantom's agent map, or
    expert lesion labels), so it is moved to the model grid for the evaluation, and a validation
    scan is synthesized to choose the thresholds.
    """

    scan_id: str
    participant: str | None = None
    session: str | None = None
    set: str | None = None
    split: str | None = None
    modalities: tuple[str, ...] | None = None
    tumor_mask: bool = False
    excluded: str | None = None
    phantom_truth: bool = False
    corrupt_record: str | None = None


@dataclass
class JobState:
    """The state of one job, with the reason and log of a failure."""

    state: str
    reason: str | None = None
    log: str | None = None


@dataclass
class StageState:
    """The state of one scan's stage, over its jobs."""

    state: str
    jobs: str | None = None
    reason: str | None = None
    log: str | None = None
    failed_jobs: list[JobState] = field(default_factory=list)


# --------------------------------------------------------------------------- the jobs of a scan


def stage_jobs(scan: ScanInfo, models: Sequence[str] = ()) -> dict[str, list[Job]]:
    """The jobs of each stage of one scan, as the workflow schedules them.

    Args:
        scan: the scan (its modalities, split and tumor mask decide which jobs apply).
        models: the evaluated models (experiments, ``<experiment>--<condition>``,
            ``floor-<name>``, ``cascade-<target>``).

    Returns:
        Stage -> its jobs, for every stage of :data:`STAGES` (an empty list: not needed).
    """
    subject = scan.scan_id
    modalities = set(scan.modalities or ())

    def job(rule: str, **wildcards: str) -> Job:
        return Job(rule, tuple(sorted({"subject": subject, **wildcards}.items())))

    # the ADC: fitted from the DWI, else a given map (modality "adc") converted
    diffusion = ("dwi" in modalities) or ("adc" in modalities)
    anat = [m for m in ("T1w", "T2w", "FLAIR") if m in modalities]
    grid = ["T1w", "ceT1w"] + (["T2w"] if "T2w" in modalities else []) + (
        ["adc"] if diffusion else []) + (["FLAIR"] if "FLAIR" in modalities else [])
    adc = "fit_adc" if "dwi" in modalities else "convert_adc_map"
    jobs: dict[str, list[Job]] = {
        "ingest": [job("validate_subject")],
        "adc": [job(adc)] if diffusion else [],
        "brainmask": [job("mask_brain")],
        "registration": [job("register_anat_to_cet1w", modality=m) for m in anat]
        + ([job("register_dwi_to_cet1w")] if diffusion else []),
        "image_qc": [job("check_image_quality", modality=m) for m in grid],
        "model_grid": [job("resample_mask_to_model_grid")]
        + [job("normalise_to_model_grid", modality=m) for m in grid],
        "qc_montage": [job("plot_qc_montage")],
        "cache": [],
        "evaluation": [],
    }
    if scan.split is None or scan.split in _TRAINING_SPLITS:
        jobs["cache"] = [job("cache_training_subject")]
    if scan.split is None or scan.split in _REPORTED_SPLITS:
        evaluation: list[Job] = []
        for model in models:
            evaluation += _evaluation_jobs(model, grid, job)
        if scan.phantom_truth and any(not m.startswith(_CASCADE_PREFIX) for m in models):
            evaluation.insert(0, job("resample_enhancing_truth_to_model_grid"))
        if evaluation and scan.tumor_mask:
            evaluation.insert(0, job("resample_tumor_mask_to_model_grid"))
        jobs["evaluation"] = list(dict.fromkeys(evaluation))
    elif scan.split in _SELECTION_SPLITS and scan.phantom_truth:
        # synthesized to choose thresholds and scored to choose recipes, never reported
        evaluation = [job("score_validation_subject", model=dict(j.wildcards)["model"])
                      if j.rule == "score_evaluation_subject" else j
                      for model in models if not model.startswith(_CASCADE_PREFIX)
                      for j in _evaluation_jobs(model, grid, job)]
        if evaluation:
            evaluation.insert(0, job("resample_enhancing_truth_to_model_grid"))
        jobs["evaluation"] = list(dict.fromkeys(evaluation))
    return jobs


def _evaluation_jobs(model: str, grid: Sequence[str], job) -> list[Job]:
    if model.startswith(_FLOOR_PREFIX):
        return [job("synthesize_floor", floor=model.removeprefix(_FLOOR_PREFIX)),
                job("score_evaluation_subject", model=model)]
    if _VARIANT_SEPARATOR in model:
        experiment, condition = model.split(_VARIANT_SEPARATOR, 1)
        inputs = []
        if condition.startswith(_CASCADE_PREFIX):  # cascade-T2w-adc: the cascade's syntheses
            for target in condition.removeprefix(_CASCADE_PREFIX).split("-"):
                inputs.append(job("synthesize_evaluation_subject",
                                  model=_CASCADE_PREFIX + target, target=target))
        return inputs + [job("synthesize_input_condition", experiment=experiment,
                             condition=condition),
                         job("score_evaluation_subject", model=model)]
    target = model.removeprefix(_CASCADE_PREFIX) if model.startswith(_CASCADE_PREFIX) else "ceT1w"
    if target not in grid:  # a cascade model is scored only where the real image exists
        return []
    return [job("synthesize_evaluation_subject", model=model, target=target),
            job("score_evaluation_subject", model=model)]


# --------------------------------------------------------------------------- states


def job_state(job: Job, results_dir: str | os.PathLike,
              files: FileIndex | None = None) -> JobState:
    """Done (every output exists), failed (a log, no outputs: its one-line reason) or not run.

    A job whose log ends with its ``done:`` line but whose outputs are missing (removed since,
    or declared by a newer version of the rule) is not run: the workflow will run it again.
    ``files`` caches folder listings across calls (one per table).
    """
    files = files or FileIndex()
    outputs, _ = job.paths(results_dir)
    missing = [path for path in outputs if not files.exists(path)]
    if not missing:
        return JobState(DONE)
    logs = [log for log in job.logs(results_dir) if files.exists(log)]
    if not logs:
        return JobState(NOT_RUN)
    log = max(logs, key=_modified)  # the rule that ran last
    finished, reason = read_log(log)
    if finished:
        names = ", ".join(os.path.basename(path) for path in missing)
        return JobState(NOT_RUN, reason=_one_line(f"outputs missing since it ran: {names}"))
    return JobState(FAILED, reason=reason, log=log)


def _modified(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


_DONE_MARK = "cesynth: done: "  # jobs.run_job's last log line


def read_log(log: str | os.PathLike) -> tuple[bool, str]:
    """Whether a job's log says it finished, and else the one-line reason it failed.

    The reason is the last ``error: <who>: <what>`` line (the job's own message, without
    ``error: ``); else the last line of a Python traceback; else a note that the job left no
    outputs.
    """
    try:
        with open(log, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - _LOG_TAIL_BYTES))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError as err:
        return False, _one_line(f"log unreadable: {err}")
    lines = [line.strip() for line in lines if line.strip()]
    for line in reversed(lines):
        if _DONE_MARK in line:
            return True, ""
        if "error: " in line:
            return False, _one_line(line[line.index("error: ") + len("error: "):])
        if line.startswith("Traceback"):
            return False, _one_line(lines[-1])
    return False, "no outputs after its log was written (the job was killed, or is still running)"


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS - 3] + "..."


def stage_state(jobs: Sequence[Job], results_dir: str | os.PathLike,
                files: FileIndex | None = None) -> StageState:
    """A stage's state over its jobs: failed if any failed, done if all done, else not run."""
    if not jobs:
        return StageState(NOT_NEEDED)
    files = files or FileIndex()
    states = [job_state(job, results_dir, files) for job in jobs]
    done = sum(s.state == DONE for s in states)
    failed = [s for s in states if s.state == FAILED]
    count = f"{done}/{len(states)}"
    if failed:
        first = failed[0]
        reason = first.reason if len(failed) == 1 else (
            f"{len(failed)} jobs failed, first: {first.reason}")
        return StageState(FAILED, count, reason, first.log, failed)
    if done == len(states):
        return StageState(DONE, count)
    noted = [s.reason for s in states if s.reason]
    return StageState(NOT_RUN, count, noted[0] if noted else None)


# --------------------------------------------------------------------------- the scans


def known_scans(results_dir: str | os.PathLike, scans: Iterable[ScanInfo] = ()) -> list[ScanInfo]:
    """Every scan the results folder knows of, with what is known of it.

    Sets and splits come from the first source that has them: ``scans`` (what the workflow
    knows, with its config's split), ``ingest/sets.tsv``, ``qc/ingest.tsv``, the previous
    ``qc/status.tsv`` (not read when ``scans`` are given: they replace an earlier refresh's).
    Modalities, tumor mask and exclusion come from the per-scan ingest reports
    ``qc/ingest/*.json`` (an ``.excluded.json`` report is a scan excluded at ingest).
    """
    root = Path(results_dir)
    found: dict[str, ScanInfo] = {}

    def fill(scan_id: str, **values) -> None:
        scan = found.get(scan_id, ScanInfo(scan_id))
        missing = {k: v for k, v in values.items() if v is not None and getattr(scan, k) is None}
        found[scan_id] = replace(scan, **missing)

    scans = list(scans)
    for scan in scans:
        found[scan.scan_id] = scan
    tables = ["ingest/sets.tsv", "qc/ingest.tsv"] + ([] if scans else [STATUS_TSV])
    for name in tables:
        for row in _table_rows(root / name):
            fill(str(row["scan_id"]), participant=row.get("participant"),
                 session=row.get("session"), set=row.get("set"), split=row.get("split"))
    reports = root / "qc" / "ingest"
    if reports.is_dir():
        for path in sorted(reports.glob("sub-*.json")):
            _merge_report(path, found)
    return sorted(found.values(), key=lambda scan: scan.scan_id)


def _merge_report(path: Path, found: dict[str, ScanInfo]) -> None:
    if path.name.endswith(".excluded.json") and path.with_name(
            path.name.removesuffix(".excluded.json") + ".json").exists():
        return  # validated since (a passing validation removes this report; a race otherwise)
    try:
        report = json.loads(path.read_text())
    except ValueError:
        report = None  # reports are written atomically: a partial one is a broken file
    except OSError:
        return  # removed since it was listed
    if not isinstance(report, dict) or "scan_id" not in report:
        scan_id = path.name.removeprefix("sub-").removesuffix(".json").removesuffix(".excluded")
        what = "malformed JSON" if report is None else "not a scan report"
        scan = found.get(scan_id, ScanInfo(scan_id))
        found[scan_id] = replace(scan, corrupt_record=(
            f"corrupt record qc/ingest/{path.name} ({what}); remove it to validate the scan "
            "again"))
        return
    scan_id = str(report["scan_id"])
    excluded = report.get("status") == "excluded"
    scan = found.get(scan_id, ScanInfo(scan_id))
    found[scan_id] = replace(
        scan, participant=scan.participant or report.get("participant"),
        session=scan.session or report.get("session"), set=scan.set or report.get("set"),
        modalities=tuple(report.get("modalities", ())),
        tumor_mask="tumor_mask" in report.get("files", {}),
        excluded=_one_line(str(report.get("reason") or "excluded")) if excluded else None)


def _table_rows(path: Path, unique: bool = True) -> list[dict[str, str | None]]:
    if not path.is_file():
        return []
    try:
        table = read_tsv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        return []
    if "scan_id" not in table.columns:
        return []
    table = table.astype(object).where(table.notna(), None)
    return (table.drop_duplicates("scan_id") if unique else table).to_dict("records")


def discover_models(results_dir: str | os.PathLike) -> list[str]:
    """The evaluated models: those the workflow recorded at its last refresh
    (``qc/status.json``), else every ``eval/<model>/`` folder (made when its first job starts)."""
    root = Path(results_dir)
    try:
        return list(json.loads((root / STATUS_JSON).read_text())["evaluated_models"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    eval_dir = root / "eval"
    if not eval_dir.is_dir():
        return []
    return sorted(p.name for p in eval_dir.iterdir()
                  if p.is_dir() and any(p.glob("sub-*")))


# --------------------------------------------------------------------------- the table


def status_table(results_dir: str | os.PathLike, scans: Iterable[ScanInfo] = (),
                 models: Sequence[str] | None = None) -> pd.DataFrame:
    """The status table of a results folder: one row per scan and stage.

    Args:
        results_dir: the results folder.
        scans: scans known beyond the files (the workflow's, before their first job).
        models: the evaluated models; None: :func:`discover_models`.

    Returns:
        Columns :data:`COLUMNS`, sorted by scan and then stage in pipeline order.
    """
    if models is None:
        models = discover_models(results_dir)
    results_dir = str(Path(results_dir))  # normalised once: the paths in the table start so
    rows, files, flags = [], FileIndex(), qc_flags(results_dir)
    for scan in known_scans(results_dir, scans):
        jobs = stage_jobs(scan, models)
        for stage in STAGES:
            if stage == "ingest":
                state = _ingest_state(scan, jobs[stage], results_dir, files)
            elif scan.excluded is not None:
                state = StageState(NOT_RUN, reason="excluded at ingest")
            elif scan.corrupt_record is not None:
                state = StageState(NOT_RUN, reason="its ingest record is corrupt")
            elif scan.modalities is None:
                state = StageState(NOT_RUN, reason="not validated yet")
            else:
                state = stage_state(jobs[stage], results_dir, files)
            rows.append({
                "scan_id": scan.scan_id, "participant": scan.participant,
                "session": scan.session, "set": scan.set, "split": scan.split, "stage": stage,
                "state": state.state, "jobs": state.jobs, "reason": state.reason,
                "log": state.log, "qc_flags": flags.get((scan.scan_id, stage)),
            })
    return pd.DataFrame(rows, columns=COLUMNS)


def qc_flags(results_dir: str | os.PathLike) -> dict[tuple[str, str], str]:
    """The QC flags set for each scan and stage, from the gathered QC tables (:data:`QC_TABLES`).

    A flag is a column holding ``True`` in a row whose ``flagged`` is ``True`` (the QC tables'
    convention: measurements are numbers or text, flags booleans). A row of one image names it:
    ``ceT1w: saturated; T2w: thick_slices, resampled_slices``. A table not gathered yet (or
    unreadable) gives none.

    Returns:
        ``(scan_id, stage) -> flags``, only where some flag is set.
    """
    found: dict[tuple[str, str], list[str]] = {}
    for name, stage in QC_TABLES.items():
        for row in _table_rows(Path(results_dir) / name, unique=False):
            if str(row.get("flagged")) != "True":
                continue
            names = [column for column, value in row.items()
                     if column != "flagged" and str(value) == "True"]
            image, text = row.get("modality"), ", ".join(names) or "flagged"
            found.setdefault((str(row["scan_id"]), stage), []).append(
                f"{image}: {text}" if image else text)
    return {key: "; ".join(values) for key, values in found.items()}


def _ingest_state(scan: ScanInfo, jobs: Sequence[Job], results_dir: str | os.PathLike,
                  files: FileIndex) -> StageState:
    for reason in (scan.corrupt_record, scan.excluded):
        if reason is not None:
            _, log = jobs[0].paths(results_dir)
            return StageState(FAILED, "0/1", reason, log)
    return stage_state(jobs, results_dir, files)


def write_status(results_dir: str | os.PathLike, scans: Iterable[ScanInfo] = (),
                 models: Sequence[str] | None = None) -> pd.DataFrame:
    """Build the status table and write it to ``<results_dir>/qc/status.tsv`` (atomically).

    When the workflow calls it (``models`` given), the evaluated models are also recorded in
    ``qc/status.json`` so that ``cesynth status`` follows the same jobs later.
    """
    scans = list(scans)
    if models is not None:
        write_json({"evaluated_models": list(models)}, Path(results_dir) / STATUS_JSON)
    table = status_table(results_dir, scans, models)
    write_table(table, results_dir)
    return table


def write_table(table: pd.DataFrame, results_dir: str | os.PathLike) -> Path:
    """Write the table to ``<results_dir>/qc/status.tsv`` atomically; return its path."""
    return write_tsv(table, Path(results_dir) / STATUS_TSV)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Counts of each state per stage, stages in pipeline order."""
    counts = pd.crosstab(pd.Categorical(table["stage"], categories=STAGES),
                         pd.Categorical(table["state"], categories=STATES), dropna=False)
    counts.index.name, counts.columns.name = "stage", None
    return counts


def format_report(table: pd.DataFrame) -> str:
    """The text ``cesynth status`` prints: counts per stage, every failed stage, then every stage
    with QC flags."""
    lines = [summary(table).to_string()]
    failed = table[table["state"] == FAILED]
    if failed.empty:
        lines.append("\nno failed stage")
    else:
        lines.append(f"\nfailed ({len(failed)}):")
        for row in failed.itertuples():
            lines.append(f"sub-{row.scan_id}\t{row.stage}\t{row.reason}\t{row.log}")
    flagged = table[table["qc_flags"].notna()] if "qc_flags" in table else table.iloc[:0]
    if not flagged.empty:
        lines.append(f"\nQC flags ({len(flagged)}):")
        for row in flagged.itertuples():
            lines.append(f"sub-{row.scan_id}\t{row.stage}\t{row.qc_flags}")
    return "\n".join(lines)
