# Shared by every stage: config validation, the subject table, wildcard constraints, input functions.
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from cesynth import experiments, ingest, phantom, tracking  # noqa: E402
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
SPLIT_FRACTIONS = ingest.SplitFractions.from_config(config["sets"])
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


def get_experiments():
    """Every training run: declared experiments, sweep points and, when enabled, the cascade."""
    found = experiments.expand(
        config["train"], config["experiments"], config["sweeps"], config["evaluation"]["reference"]
    )
    if config["cascade"]["enabled"]:
        found.update(experiments.cascade_experiments(config["train"], config["cascade"]["train"]))
    if any(c.startswith("cascade-") for c in config["evaluation"]["conditions"]):
        if not config["cascade"]["enabled"]:
            raise ValueError("evaluation.conditions has a cascade condition: set cascade.enabled")
    return found


EXPERIMENTS = get_experiments()


wildcard_constraints:
    subject="[a-zA-Z0-9]+",
    modality="T1w|T2w|adc|ceT1w",
    stage="[a-z]+",
    experiment="[a-zA-Z0-9-]+",
    trunk="t[0-9a-f]+",
    model="[a-zA-Z0-9-]+",


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
    return ingest.scan_split(scan.set, scan.participant, SPLIT_FRACTIONS)


def get_training_caches(split):
    """Input function: the training caches of every Set A scan in ``split`` (train, validation)."""

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
    """The settings that shape the experiment's result (execution settings come from the job)."""
    return _shaping(EXPERIMENTS[wildcards.experiment].settings)


def get_trunk_settings(wildcards):
    return _shaping(experiments.trunk_settings(TRUNKS[wildcards.trunk]))


def _shaping(settings):
    return {k: v for k, v in settings.items() if k not in experiments.EXECUTION_SETTINGS}


def get_trunks():
    """Trunk ID -> the settings of one experiment that starts from it (all stages)."""
    trunks = {}
    for experiment in EXPERIMENTS.values():
        trunk = experiments.trunk_id(experiment.settings)
        if trunk is not None:
            trunks.setdefault(trunk, experiment.settings)
    return trunks


TRUNKS = get_trunks()


def get_trunk_checkpoint(wildcards):
    """The shared checkpoint the experiment's last stage starts from (none for one stage)."""
    trunk = experiments.trunk_id(EXPERIMENTS[wildcards.experiment].settings)
    return {} if trunk is None else {"trunk": f"{RESULTS}/train/trunks/{trunk}/checkpoint_final.pt"}


def get_preprocessing_record():
    """How the training images were made, stored in every checkpoint."""
    return {
        "model_grid": config["model_grid"]["shape"],
        "normalise": config["normalise"]["method"],
        "brainmask": config["brainmask"]["method"],
    }


def get_sweep_tags(wildcards):
    """The sweeps an experiment is a point of (its MLflow run goes under the first's parent)."""
    return [sweep for sweep, _ in EXPERIMENTS[wildcards.experiment].sweeps]


EVALUATION_SPLITS = ("test",)  # the reported sets: Set A test and Set B; validation never


def get_evaluation_scans(target="ceT1w"):
    """The reported scans (Set A test, Set B) that have ``target`` to score against."""
    scans = [scan_id for scan_id in SCANS if get_split(scan_id) in EVALUATION_SPLITS]
    needs = {"T2w": "t2w", "adc": "dwi"}.get(target)
    return [s for s in scans if needs is None or getattr(SCANS[s], needs) is not None]


def get_evaluated_models():
    """Evaluated name -> (experiment or None for a floor, input condition or "full")."""
    models = {
        name: (name, "full") for name, e in EXPERIMENTS.items() if e.target == "ceT1w"
    }
    reference = config["evaluation"]["reference"]
    for condition in config["evaluation"]["conditions"]:
        models[experiments.variant_name(reference, condition)] = (reference, condition)
    for floor in config["evaluation"]["floors"]:
        models[experiments.FLOOR_PREFIX + floor] = (None, "full")
    return models


EVALUATED = get_evaluated_models()


def get_cascade_models():
    return [name for name, e in EXPERIMENTS.items() if e.target != "ceT1w"]


def _constraint(names):
    return "|".join(sorted(names)) or "(?!)"


def get_full_input_models():
    full = [n for n, (e, v) in EVALUATED.items() if e is not None and v == "full"]
    return _constraint(full + get_cascade_models())


def get_floor_inputs(wildcards):
    """The T1 floor reads the T1; the regression floor every input and its fitted model."""
    images = get_synthesis_inputs(wildcards)
    if wildcards.floor == "t1":
        return {"T1w": images["T1w"]}
    return {**images, "model": rules.fit_voxel_regression.output.model}


def get_conditions():
    return _constraint(config["evaluation"]["conditions"])


def get_evaluated_checkpoint(wildcards):
    """The checkpoint evaluation uses (``evaluation.checkpoint``: final or best)."""
    experiment = getattr(wildcards, "experiment", None) or wildcards.model
    which = config["evaluation"]["checkpoint"]
    return f"{RESULTS}/train/{experiment}/checkpoint_{which}.pt"


def get_synthesis_inputs(wildcards):
    """The subject's normalised model-grid input images (not the CE-T1), by modality."""
    images = get_model_grid_images(wildcards)
    images.pop("ceT1w", None)
    return images


def get_condition_inputs(wildcards):
    """The inputs under an input condition: zeroed ones left out, cascade ones synthesized."""
    kind, modalities = experiments.condition_inputs(wildcards.condition)
    images = get_synthesis_inputs(wildcards)
    for modality in modalities:
        images.pop(modality, None)
        if kind == "cascade":
            images[modality] = get_synthetic_path(
                experiments.CASCADE_PREFIX + modality, wildcards.subject, modality
            )
    return images


def get_zeroed_inputs(wildcards):
    kind, modalities = experiments.condition_inputs(wildcards.condition)
    return list(modalities) if kind == "zero" else []


def get_synthetic_path(model, subject, modality="ceT1w"):
    return f"{EVAL}/{model}/sub-{subject}/sub-{subject}_space-model_desc-synthetic_{modality}.nii.gz"


def get_model_target(model):
    """What an evaluated model synthesizes (a cascade model: its input modality)."""
    experiment = EXPERIMENTS.get(model)
    return experiment.target if experiment is not None else "ceT1w"


def get_scored_image(wildcards):
    target = get_model_target(wildcards.model)
    return {
        "image": get_synthetic_path(wildcards.model, wildcards.subject, target),
        "target": preproc("anat", target, space="model", desc="norm").format(
            subject=wildcards.subject
        ),
    }


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
    """Every scored (model, subject): the CE-T1 models, conditions and floors, the cascade."""
    pairs = [(model, s) for model in EVALUATED for s in get_evaluation_scans()]
    for model in get_cascade_models():
        pairs += [(model, s) for s in get_evaluation_scans(EXPERIMENTS[model].target)]
    return [f"{EVAL}/{model}/sub-{s}/sub-{s}_metrics.json" for model, s in pairs]


def get_catalog():
    """One row per evaluated model for the paper's tables (cesynth.paper selects from it)."""
    reference = config["evaluation"]["reference"]
    return [
        experiments.catalog_row(name, EXPERIMENTS.get(experiment), variant, reference)
        for name, (experiment, variant) in EVALUATED.items()
    ]


def get_regression_subjects(wildcards=None):
    """Model-grid images (and brain mask) of each Set A training scan, by modality."""
    subjects = []
    for scan_id in SCANS:
        if get_split(scan_id) != "train":
            continue
        images = get_model_grid_images(SimpleNamespace(subject=scan_id))
        images["mask"] = preproc("anat", "mask", space="model", desc="brain").format(
            subject=scan_id
        )
        subjects.append(images)
    return subjects


def get_regression_training_images(wildcards):
    return [path for images in get_regression_subjects() for path in images.values()]


PANEL_SUBJECTS = 3  # reported subjects drawn in the Fig. 4-like panel (Set B first)


def get_panel_layout():
    """Subject -> {panel: image, "slice_mask": tumor or brain mask} for the synthesis panel."""
    reported = get_evaluation_scans()
    chosen = sorted(reported, key=lambda s: (SCANS[s].set != "B", s))[:PANEL_SUBJECTS]
    models = [m for m, (e, v) in EVALUATED.items() if v == "full"]
    layout = {}
    for scan_id in chosen:
        images = get_model_grid_images(SimpleNamespace(subject=scan_id))
        panels = {m: images[m] for m in ("T1w", "T2w", "adc") if m in images}
        panels["truth"] = images["ceT1w"]
        panels.update({model: get_synthetic_path(model, scan_id) for model in models})
        mask = "tumor" if SCANS[scan_id].tumor_mask is not None else "brain"
        panels["slice_mask"] = preproc("anat", "mask", space="model", desc=mask).format(
            subject=scan_id
        )
        layout[scan_id] = panels
    return layout


def get_panel_images(wildcards):
    return [path for panels in get_panel_layout().values() for path in panels.values()]


def get_study_targets():
    """The phantom study's outputs: the evaluation tables, the paper's tables and figures."""
    return [f"{EVAL}/tables.md", f"{EVAL}/paper/paper_tables.md", f"{EVAL}/paper/fig4_synthesis.png"]


def get_release_inputs(wildcards):
    """The experiment's evaluated checkpoint, and the evaluation summary when it is evaluated;
    the cascade models' evaluated checkpoints (cascade_T2w, cascade_adc) for the inputs it takes,
    when the cascade is trained."""
    inputs = {"checkpoint": get_evaluated_checkpoint(wildcards)}
    if get_evaluation_scans() and wildcards.experiment in EVALUATED:
        inputs["summary"] = f"{EVAL}/summary.tsv"
    released = EXPERIMENTS.get(wildcards.experiment)
    takes = released.settings.get("modalities", ()) if released is not None else ()
    for cascade in get_cascade_models():
        target = EXPERIMENTS[cascade].target
        if target in takes:
            which = config["evaluation"]["checkpoint"]
            inputs[f"cascade_{target}"] = f"{RESULTS}/train/{cascade}/checkpoint_{which}.pt"
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
    targets += [f"{RESULTS}/train/{name}/checkpoint_final.pt" for name in EXPERIMENTS]
    if get_evaluation_scans() and EVALUATED:
        targets += get_study_targets()
    targets += [f"{RESULTS}/release/{name}.json" for name in config["experiments"]]
    return targets


onstart:
    tracking.init_store(TRACKING_URI, config["mlflow"]["experiment"])
    tracking.sweep_parent_runs(TRACKING_URI, config["mlflow"]["experiment"], list(config["sweeps"]))


onsuccess:
    ingest.tabulate_reports(
        sorted(Path(QC, "ingest").glob("sub-*.json")), f"{QC}/ingest.tsv",
        SPLIT_FRACTIONS,
    )


onerror:
    ingest.tabulate_reports(
        sorted(Path(QC, "ingest").glob("sub-*.json")), f"{QC}/ingest.tsv",
        SPLIT_FRACTIONS,
    )
