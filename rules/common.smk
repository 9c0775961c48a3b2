# Shared by every stage: config validation, the subject table, wildcard constraints, input functions.
import os
import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from cesynth import ingest, phantom, tracking  # noqa: E402
from cesynth.io import bids_path  # noqa: E402
from cesynth.jobs import ENV_EXPERIMENT, ENV_RESULTS_DIR, ENV_TRACKING_URI  # noqa: E402


validate(config, schema="../config/config.schema.yaml")

BIDS = config["bids_dir"]
RESULTS = config["results_dir"]
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
PREPROC = f"{RESULTS}/preproc"
QC = f"{RESULTS}/qc"
TRACKING_URI = tracking.default_tracking_uri(RESULTS, config["mlflow"]["tracking_uri"])

os.environ[ENV_TRACKING_URI] = TRACKING_URI
os.environ[ENV_EXPERIMENT] = config["mlflow"]["experiment"]
os.environ[ENV_RESULTS_DIR] = str(Path(RESULTS).resolve())
tracking.export_invocation_context(config, workflow.basedir)


def is_demo():
    return config["demo"]["enabled"]


def is_dicom():
    return bool(config["dicom_dir"])


def get_demo_plan():
    demo = config["demo"]
    return phantom.plan_cohort(demo["subjects"], demo["seed"], demo["set_b_subjects"])


def get_scans():
    """The scans to process, by scan ID, known before any job runs (demo plan or BIDS listing)."""
    if is_demo():
        scans = [
            ingest.expected_scan(BIDS, row.participant_id.removeprefix("sub-"), row.set)
            for row in get_demo_plan().itertuples()
        ]
    elif is_dicom():
        scans = [
            ingest.expected_scan(BIDS, label, "A")
            for label in ingest.list_dicom_subjects(config["dicom_dir"])
        ]
    else:
        scans = ingest.discover_bids(BIDS)
    excluded = set(config["ingest"]["exclude_subjects"])
    return {scan.scan_id: scan for scan in scans if scan.scan_id not in excluded}


SCANS = get_scans()


wildcard_constraints:
    subject="[a-zA-Z0-9]+",


def get_scan(wildcards):
    return SCANS[wildcards.subject]


def get_raw_inputs(wildcards):
    """The raw files of one scan that exist (or that the demo / DICOM rules will make)."""
    scan = get_scan(wildcards)
    if is_dicom():
        checkpoints.convert_dicom.get(subject=wildcards.subject)
        scan = ingest.rescan(scan)
    files = {
        "t1w": scan.t1w,
        "cet1w": scan.cet1w,
        "t2w": scan.t2w,
        "dwi": scan.dwi,
        "bval": scan.bval,
        "bvec": scan.bvec,
        "tumor_mask": scan.tumor_mask,
    }
    return {key: str(path) for key, path in files.items() if path is not None}


def get_demo_subject_regex():
    """Demo rules may only make the planned demo subjects (never a real dataset's files)."""
    return _any_of(SCANS) if is_demo() else "(?!)"


def get_dicom_subject_regex():
    return _any_of(SCANS) if is_dicom() else "(?!)"


def get_dicom_subject_dir(wildcards):
    return f"{config['dicom_dir']}/{wildcards.subject}"


def _any_of(labels):
    return "|".join(sorted(labels)) or "(?!)"


def get_ingest_reports(wildcards=None):
    return [f"{QC}/ingest/sub-{scan_id}.json" for scan_id in SCANS]


def get_final_targets():
    targets = [f"{RESULTS}/ingest/sets.tsv"]
    return targets


onstart:
    tracking.init_store(TRACKING_URI, config["mlflow"]["experiment"])


onsuccess:
    ingest.tabulate_reports(
        sorted(Path(QC, "ingest").glob("sub-*.json")), f"{QC}/ingest.tsv",
        config["sets"]["validation_fraction"],
    )


onerror:
    ingest.tabulate_reports(
        sorted(Path(QC, "ingest").glob("sub-*.json")), f"{QC}/ingest.tsv",
        config["sets"]["validation_fraction"],
    )
