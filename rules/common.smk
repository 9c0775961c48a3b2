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
EVAL = f"{RESULTS}/eval"
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


def get_demo_plan_row(wildcards):
    """One demo subject's plan (set, tumors, seed): a param, so other subjects' changes don't
    rerun this subject."""
    plan = get_demo_plan().set_index("participant_id")
    return plan.loc[f"sub-{wildcards.subject}"].to_dict()


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
    modality="T1w|T2w|adc|ceT1w",
    stage="[a-z]+",
    experiment="[a-zA-Z0-9]+",


def get_scan(wildcards):
    return SCANS[wildcards.subject]


def get_scan_set(wildcards):
    return get_scan(wildcards).set


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


def get_demo_subject_regex(set_name):
    """Demo rules may only make the planned demo subjects (never a real dataset's files)."""
    if not is_demo():
        return "(?!)"
    return _any_of(scan_id for scan_id, scan in SCANS.items() if scan.set == set_name)


def get_demo_subject_outputs():
    """Every file of one demo subject: raw BIDS images with sidecars, and the ground truth."""
    truth = f"{BIDS}/derivatives/phantom/sub-{{subject}}/sub-{{subject}}"
    outputs = {
        "t1w": bids_path(BIDS, "{subject}", "anat", "T1w"),
        "cet1w": bids_path(BIDS, "{subject}", "anat", "T1w", ce="gadolinium"),
        "t2w": bids_path(BIDS, "{subject}", "anat", "T2w"),
        "true_adc": f"{truth}_desc-trueadc_adc.nii.gz",
        "true_mask": f"{truth}_space-ceT1w_desc-brain_mask.nii.gz",
        "true_enhancing": f"{truth}_space-ceT1w_desc-enhancing_mask.nii.gz",
        "true_transforms": f"{truth}_desc-transforms.json",
    }
    for ext in (".nii.gz", ".bval", ".bvec"):
        outputs[f"dwi{ext.replace('.', '_')}"] = bids_path(BIDS, "{subject}", "dwi", "dwi", ext=ext)
    return outputs


def get_dicom_subject_regex():
    return _any_of(SCANS) if is_dicom() else "(?!)"


def get_dicom_subject_dir(wildcards):
    return f"{config['dicom_dir']}/{wildcards.subject}"


def _any_of(labels):
    return "|".join(sorted(labels)) or "(?!)"


def preproc(datatype, suffix, **entities):
    """A per-subject derivative path pattern under results/preproc (BIDS-derivatives names)."""
    return bids_path(PREPROC, "{subject}", datatype, suffix, **entities)


def get_validated_report(wildcards):
    return f"{QC}/ingest/sub-{wildcards.subject}.json"


def get_cet1w(wildcards):
    return get_raw_inputs(wildcards)["cet1w"]


def get_dwi_inputs(wildcards):
    raw = get_raw_inputs(wildcards)
    return {key: raw[key] for key in ("dwi", "bval", "bvec")}


def get_dwi(wildcards):
    return get_raw_inputs(wildcards)["dwi"]


def get_bval(wildcards):
    return get_raw_inputs(wildcards)["bval"]


def get_anat_image(wildcards):
    return get_raw_inputs(wildcards)[wildcards.modality.lower()]


def get_phantom_truth(wildcards, *names):
    """Phantom ground truth of a subject (QC against the known answer); nothing for real data."""
    if not (is_demo() or Path(BIDS, "derivatives", "phantom").is_dir()):
        return {}
    subject = wildcards.subject
    folder = f"{BIDS}/derivatives/phantom/sub-{subject}"
    files = {
        "true_adc": f"sub-{subject}_desc-trueadc_adc.nii.gz",
        "true_mask": f"sub-{subject}_space-ceT1w_desc-brain_mask.nii.gz",
        "true_transforms": f"sub-{subject}_desc-transforms.json",
    }
    return {name: f"{folder}/{files[name]}" for name in names}


def get_adc_truth(wildcards):
    return get_phantom_truth(wildcards, "true_adc")


def get_mask_truth(wildcards):
    return get_phantom_truth(wildcards, "true_mask")


def get_registration_truth(wildcards):
    return get_phantom_truth(wildcards, "true_transforms", "true_mask")


def get_registered_images(wildcards):
    """The subject's images on the native CE-T1 grid, by modality (missing ones left out)."""
    scan = get_scan(wildcards)
    images = {"ceT1w": get_cet1w(wildcards), "T1w": preproc("anat", "T1w", space="ceT1w")}
    if scan.t2w is not None:
        images["T2w"] = preproc("anat", "T2w", space="ceT1w")
    if scan.dwi is not None:
        images["adc"] = preproc("anat", "adc", space="ceT1w")
    return {key: path.format(subject=wildcards.subject) for key, path in images.items()}


def get_image_to_normalise(wildcards):
    images = get_registered_images(wildcards)
    if wildcards.modality not in images:
        raise ValueError(f"sub-{wildcards.subject} has no {wildcards.modality} image")
    return images[wildcards.modality]


def get_subject_targets(scan_id):
    """Every per-subject output of the preprocessing stages for one scan."""
    scan = SCANS[scan_id]
    modalities = ["T1w", "ceT1w"] + (["T2w"] if scan.t2w else []) + (["adc"] if scan.dwi else [])
    norm = [preproc("anat", m, space="model", desc="norm") for m in modalities]
    targets = norm + [
        preproc("anat", "mask", space="model", desc="brain"),
        f"{QC}/sub-{{subject}}/sub-{{subject}}_desc-montage.png",
    ]
    return [target.format(subject=scan_id) for target in targets]


QC_STAGES = ("adc", "registration", "brainmask", "normalise")


def get_qc_rows(wildcards):
    """The per-job QC rows of one stage, for the subjects (and images) that stage runs on."""
    rows = []
    for scan_id, scan in SCANS.items():
        registered = ["T1w"] + (["T2w"] if scan.t2w else [])
        normalised = ["T1w", "ceT1w"] + (["T2w"] if scan.t2w else [])
        if scan.dwi:
            registered.append("dwi")
            normalised.append("adc")
        per_job = {
            "adc": [""] if scan.dwi else [],
            "brainmask": [""],
            "registration": [f"_{m}" for m in registered],
            "normalise": [f"_{m}" for m in normalised],
        }[wildcards.stage]
        rows += [f"{QC}/{wildcards.stage}/sub-{scan_id}{job}.tsv" for job in per_job]
    return rows


def get_split(scan_id):
    scan = SCANS[scan_id]
    return ingest.scan_split(scan.set, scan.participant, config["sets"]["validation_fraction"])


def get_training_caches(split):
    """Input function: the training caches of every Set A scan in ``split``."""

    def caches(wildcards):
        scan_ids = [scan_id for scan_id in SCANS if get_split(scan_id) == split]
        return [f"{RESULTS}/train/cache/sub-{scan_id}" for scan_id in scan_ids]

    return caches


def get_model_grid_images(wildcards):
    """The subject's normalised model-grid images, by modality (missing ones left out)."""
    modalities = get_registered_images(wildcards)
    pattern = {m: preproc("anat", m, space="model", desc="norm") for m in modalities}
    return {m: path.format(subject=wildcards.subject) for m, path in pattern.items()}


def get_train_settings(wildcards):
    return get_train_settings_of(wildcards.experiment)


def get_train_settings_of(experiment):
    """The ``train`` config with the experiment's overrides."""
    settings = {**config["train"], **config["experiments"][experiment]}
    settings.pop("gpus")
    return settings


EVALUATION_SPLITS = ("validation", "test")  # the paper's test sets: Set A held out, and Set B


def get_evaluation_scans():
    """Scans the models are scored on: the held-out Set A subjects and Set B."""
    return [scan_id for scan_id in SCANS if get_split(scan_id) in EVALUATION_SPLITS]


def get_evaluated_experiments():
    """Experiments whose model synthesizes the CE-T1 (T1->T2 and T1->ADC models are not scored)."""
    return [name for name in config["experiments"]
            if get_train_settings_of(name).get("target", "ceT1w") == "ceT1w"]


def get_synthesis_inputs(wildcards):
    """The subject's normalised model-grid input images (not the CE-T1), by modality."""
    images = get_model_grid_images(wildcards)
    images.pop("ceT1w", None)
    return images


def get_tumor_mask(wildcards):
    raw = get_raw_inputs(wildcards)
    if "tumor_mask" not in raw:
        raise ValueError(f"sub-{wildcards.subject} has no tumor mask")
    return raw["tumor_mask"]


def get_evaluation_tumor_mask(wildcards):
    """The model-grid tumor mask of a Set B subject that has one; nothing otherwise."""
    if get_scan(wildcards).tumor_mask is None:
        return {}
    return {"tumor_mask": preproc("anat", "mask", space="model", desc="tumor").format(
        subject=wildcards.subject)}


def get_evaluation_metrics(wildcards):
    return [f"{EVAL}/{name}/sub-{scan_id}/sub-{scan_id}_metrics.json"
            for name in get_evaluated_experiments() for scan_id in get_evaluation_scans()]


def get_release_inputs(wildcards):
    """The experiment's best checkpoint, and the evaluation summary when it is evaluated."""
    inputs = {"checkpoint": f"{RESULTS}/train/{wildcards.experiment}/checkpoint_best.pt"}
    if get_evaluation_scans() and wildcards.experiment in get_evaluated_experiments():
        inputs["summary"] = f"{EVAL}/summary.tsv"
    return inputs


def get_registered_name(wildcards):
    return f"{config['release']['registered_model_prefix']}-{wildcards.experiment}"


def get_ingest_reports(wildcards=None):
    return [f"{QC}/ingest/sub-{scan_id}.json" for scan_id in SCANS]


def get_final_targets():
    targets = [f"{RESULTS}/ingest/sets.tsv"]
    if is_demo():
        targets.append(f"{BIDS}/participants.tsv")
    targets += [f"{QC}/{stage}.tsv" for stage in QC_STAGES]
    for scan_id in SCANS:
        targets += get_subject_targets(scan_id)
    targets += [f"{RESULTS}/train/{name}/checkpoint_best.pt" for name in config["experiments"]]
    if get_evaluation_scans() and get_evaluated_experiments():
        targets.append(f"{EVAL}/tables.md")
    targets += [f"{RESULTS}/release/{name}.json" for name in config["experiments"]]
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
