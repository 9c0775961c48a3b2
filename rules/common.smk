# Shared by every stage: config validation, the subject table, wildcard constraints, input functions.
import glob
import itertools
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from cesynth import (  # noqa: E402
    experiments,
    importing,
    ingest,
    ingest_report,
    phantom,
    preprocessing,
    run_spool,
    splits,
    status,
    tracking,
    workflow_config,
)
from cesynth.adc_maps import adc_sidecar_path  # noqa: E402
from cesynth.io import bids_path, one_line_error  # noqa: E402
from cesynth.jobs import ENV_EXPERIMENT, ENV_RESULTS_DIR, ENV_TRACKING_URI  # noqa: E402

# --config nested values arrive as strings: typed by the schema first; a bad value is one line
workflow_config.coerce_command_line_values(config, f"{workflow.basedir}/config/config.schema.yaml")
try:
    validate(config, schema="../config/config.schema.yaml")
except WorkflowError as err:
    workflow_config.exit_on_schema_error(err)

BIDS = config["bids_dir"]
RESULTS = config["results_dir"]
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
PREPROC = f"{RESULTS}/preproc"
QC = f"{RESULTS}/qc"
EVAL = f"{RESULTS}/eval"
SPLIT_FRACTIONS = splits.SplitFractions.from_config(config["sets"])
TRACKING_URI = tracking.default_tracking_uri(RESULTS, config["mlflow"]["tracking_uri"])

os.environ[ENV_TRACKING_URI] = TRACKING_URI
os.environ[ENV_EXPERIMENT] = config["mlflow"]["experiment"]
os.environ[ENV_RESULTS_DIR] = str(Path(RESULTS).resolve())
tracking.export_invocation_context(config, workflow.basedir)


def is_demo():
    return config["demo"]["enabled"]


def is_dicom():
    return bool(config["dicom_dir"])


def is_import():
    return bool(config["import_dir"])


def grows_with_attempt(base):
    """A resource (mem_mb, runtime) that grows with each try: ``base`` on the first, twice that
    on the second (the profile's ``retries``), so a job killed for memory or time asks for more."""
    return lambda wildcards, attempt: base * attempt


def get_training_gpus():
    """GPUs a training job asks the scheduler for: ``train.gpus``, or one when ``train.device``
    is cuda and ``train.gpus`` is 0 (so a cluster gives the job the GPU it will look for)."""
    gpus = config["train"]["gpus"]
    return gpus if gpus or config["train"]["device"] != "cuda" else 1


def get_synthesis_gpus():
    """One GPU for a synthesis job when ``train.device`` is cuda (synthesis runs on that device)."""
    return 1 if config["train"]["device"] == "cuda" else 0


def get_import_scans():
    """The scans a published cohort's import will write, from its file names (no image read);
    the set as the import assigns it (auto: Set B with a tumor segmentation)."""
    settings = config["import"]
    if is_demo() or is_dicom():
        raise ValueError("import_dir is set: set demo.enabled: false and dicom_dir: null")
    return importing.planned_scans(
        config["import_dir"], BIDS, settings["layout"], settings["patterns"], settings["set"]
    )


def get_input_modalities():
    """Every input a model of the run takes, train.modalities first, then those only a declared
    experiment or sweep point names (the cascade models take the T1 alone): the training
    caches' channels. Read from the config, as the subjects' inputs are known before the
    experiments are expanded."""
    found = dict.fromkeys(config["train"]["modalities"])
    for overrides in config["experiments"].values():
        found.update(dict.fromkeys((overrides or {}).get("modalities", ())))
    for grid in config["sweeps"].values():
        for point in (grid or {}).get("modalities", ()):
            found.update(dict.fromkeys(point))
    return list(found)


INPUT_MODALITIES = get_input_modalities()


def is_flair_declared():
    """A model takes the FLAIR: only then is it validated (and required), registered and
    normalised."""
    return ingest.FLAIR in INPUT_MODALITIES


def is_demo_flair():
    """The demo phantom writes a FLAIR: when asked (demo.flair) or when a model takes it."""
    return config["demo"]["flair"] or is_flair_declared()


def get_demo_settings():
    """The demo config, ``flair`` resolved (asked for, or a model takes the FLAIR)."""
    return {**config["demo"], "flair": is_demo_flair()}


def get_demo_plan():
    """The demo cohort's plan; the split fractions let its validation subjects hold lesions of
    every type."""
    demo = config["demo"]
    return phantom.plan_cohort(
        demo["subjects"], demo["seed"], demo["set_b_subjects"], fractions=SPLIT_FRACTIONS
    )


def get_demo_plan_row(wildcards):
    """One demo subject's plan (set, lesion types, seed): a param, so other subjects' changes don't
    rerun this subject."""
    plan = get_demo_plan().set_index("participant_id")
    return plan.loc[f"sub-{wildcards.subject}"].to_dict()


def get_scans():
    """The scans to process, by scan ID, known before any job runs (demo plan, DICOM or import
    listing, or BIDS listing)."""
    if is_import():
        scans = get_import_scans()
    elif is_demo():
        scans = [
            ingest.expected_scan(
                BIDS, row.participant_id.removeprefix("sub-"), row.set, flair=is_demo_flair()
            )
            for row in get_demo_plan().itertuples()
        ]
    elif is_dicom():
        scans = [
            ingest.expected_scan(BIDS, label, "A", flair=is_flair_declared())
            for label in ingest.list_dicom_subjects(config["dicom_dir"])
        ]
    else:
        scans = ingest.discover_bids(BIDS)
    excluded = set(config["ingest"]["exclude_subjects"])
    return {scan.scan_id: scan for scan in scans if scan.scan_id not in excluded}


SCANS = get_scans()
try:
    splits.check_assigned(SPLIT_FRACTIONS, {s.participant: s.set for s in SCANS.values()})
except ValueError as err:
    workflow_config.exit_on_config_error(str(err))


def get_seeds():
    """The declared seeds (evaluation.seeds); empty: train.seed alone."""
    return list(config["evaluation"]["seeds"])


def get_experiments():
    """Every training run: declared experiments and sweep points, once per declared seed, and,
    when enabled, the cascade (trained with the first seed only: it fills inputs for all)."""
    found = experiments.expand(
        config["train"],
        config["experiments"],
        config["sweeps"],
        config["evaluation"]["reference"],
        seeds=get_seeds(),
    )
    if config["cascade"]["enabled"]:
        seeded = experiments.seeded_train(config["train"], get_seeds())
        found.update(experiments.cascade_experiments(seeded, config["cascade"]["train"]))
    if any(c.startswith("cascade-") for c in config["evaluation"]["conditions"]):
        if not config["cascade"]["enabled"]:
            raise ValueError("evaluation.conditions has a cascade condition: set cascade.enabled")
    return found


EXPERIMENTS = get_experiments()


wildcard_constraints:
    subject=ingest.SCAN_ID_PATTERN,
    modality="T1w|T2w|adc|ceT1w|FLAIR",
    stage="[a-z]+",
    experiment="[a-zA-Z0-9-]+",
    trunk="t[0-9a-f]+",
    model="[a-zA-Z0-9-]+",


def get_scan(wildcards):
    return SCANS[wildcards.subject]


def get_scan_set(wildcards):
    return get_scan(wildcards).set


def get_converted_scan(wildcards):
    """One scan as its files are once the DICOM conversion or the import (checkpoints) ran."""
    scan = get_scan(wildcards)
    if is_dicom():
        checkpoints.convert_dicom.get(subject=wildcards.subject)
        scan = ingest.with_files_on_disk(scan)
    elif is_import():
        checkpoints.import_dataset.get()
        scan = ingest.with_files_on_disk(scan)
    return scan


def get_raw_inputs(wildcards):
    """The raw files of one scan that exist (or that the demo / DICOM rules will make)."""
    scan = get_converted_scan(wildcards)
    files = {
        "t1w": scan.t1w,
        "cet1w": scan.cet1w,
        "t2w": scan.t2w,
        "dwi": scan.dwi,
        "bval": scan.bval,
        "bvec": scan.bvec,
        "tumor_mask": scan.tumor_mask,
        # a given ADC map only where it is used (no raw DWI); the dataset's brain mask is
        # not a raw input (validation must not rerun when ingest.skull_stripped changes):
        # mask_brain reads and checks it
        "adc": scan.adc if scan.adc_source == "map" else None,
        # the FLAIR only where a model takes it (else it is never read)
        "flair": scan.flair if is_flair_declared() else None,
    }
    return {key: str(path) for key, path in files.items() if path is not None}


def get_demo_subject_regex(set_name):
    """Demo rules may only make the planned demo subjects (never a real dataset's files)."""
    if not is_demo():
        return "(?!)"
    return _any_of(scan_id for scan_id, scan in SCANS.items() if scan.set == set_name)


# The phantom's ground truth as the rules name it -> its key in phantom.truth_files.
PHANTOM_TRUTH_KEYS = {
    "true_adc": "true_adc",
    "true_mask": "brain_mask",
    "true_enhancing": "enhancing_mask",
    "true_agent": "agent_map",
    "true_lesion_dseg": "lesion_dseg",
    "true_lesion_instances": "lesion_instances",
    "true_lesion_instances_sidecar": "lesion_instances_sidecar",
    "true_transforms": "transforms",
}


def get_phantom_truth_paths(subject, *names):
    """Paths of a subject's phantom ground truth (names from phantom.truth_files), by rule key."""
    truth = phantom.truth_files(f"sub-{subject}")
    return {name: f"{BIDS}/{truth[PHANTOM_TRUTH_KEYS[name]]}" for name in names}


def get_demo_tumor_mask_output():
    """A Set B demo subject's tumor mask (the phantom's name for it), as a path pattern."""
    return str(Path(f"{BIDS}/{phantom.truth_files('sub-{subject}')['tumor_mask']}"))


def get_demo_subject_outputs():
    """Every file of one demo subject: raw BIDS images with sidecars, and the ground truth."""
    outputs = {
        "t1w": bids_path(BIDS, "{subject}", "anat", "T1w"),
        "cet1w": bids_path(BIDS, "{subject}", "anat", "T1w", ce="gadolinium"),
        "t2w": bids_path(BIDS, "{subject}", "anat", "T2w"),
        **get_phantom_truth_paths("{subject}", *PHANTOM_TRUTH_KEYS),
    }
    if is_demo_flair():
        outputs["flair"] = bids_path(BIDS, "{subject}", "anat", ingest.FLAIR)
    for ext in (".nii.gz", ".bval", ".bvec"):
        outputs[f"dwi{ext.replace('.', '_')}"] = bids_path(BIDS, "{subject}", "dwi", "dwi", ext=ext)
    return outputs


def get_dicom_subject_regex():
    return _any_of(SCANS) if is_dicom() else "(?!)"


def get_import_source(wildcards):
    """The published cohort's folder (only read), when import_dir is set."""
    return config["import_dir"] if is_import() else []


def get_dicom_subject_dir(wildcards):
    return f"{config['dicom_dir']}/{wildcards.subject}"


def _any_of(labels):
    return "|".join(sorted(labels)) or "(?!)"


def preproc(datatype, suffix, **entities):
    """A per-subject derivative path pattern under results/preproc (BIDS-derivatives names)."""
    return bids_path(PREPROC, "{subject}", datatype, suffix, **entities)


# Paths of another rule's files come from its declared output (rules.<rule>.output.<name>), so a
# change there reaches every consumer. rules.<rule> exists once that rule is parsed, so input
# functions (run after parsing) may name any rule, and a function called while parsing (a rule's
# output or params, the targets in the Snakefile) only the rules parsed before it.
# Planning calls these ~14 times per job: str.format on the pattern (its inline constraints
# dropped) costs a tenth of what Snakemake's general expand() does (benchmarks/RESULTS.md).
_PATTERN_FORMATS = {}


def path_of(pattern, **wildcards):
    """A rule's output pattern filled with one value per wildcard."""
    pattern_format = _PATTERN_FORMATS.get(pattern)
    if pattern_format is None:
        pattern_format = re.sub(r"\{(\w+),[^{}]*\}", r"{\1}", str(pattern))
        _PATTERN_FORMATS[pattern] = pattern_format
    for name, value in wildcards.items():
        if not isinstance(value, str | int):
            raise TypeError(f"path_of: one value per wildcard, got {name}={value!r}")
    return pattern_format.format(**wildcards)


def paths_of(pattern, **wildcards):
    """A rule's output pattern filled with every combination of the wildcard values, in order."""
    names = list(wildcards)
    values = [[v] if isinstance(v, str | int) else list(v) for v in wildcards.values()]
    return [path_of(pattern, **dict(zip(names, combo))) for combo in itertools.product(*values)]


def get_modalities(scan):
    """The images of a scan on the model grid: T1w and CE-T1, then T2w and ADC (fitted from the
    DWI, or the given ADC map) where the scan has them, and the FLAIR where a model takes it."""
    adc = ["adc"] if scan.adc_source is not None else []
    flair = [ingest.FLAIR] if scan.flair and is_flair_declared() else []
    return ["T1w", "ceT1w"] + (["T2w"] if scan.t2w else []) + adc + flair


def get_cet1w(wildcards):
    return get_raw_inputs(wildcards)["cet1w"]


def get_brainmask_image(wildcards):
    """The image the brain mask is computed from (brainmask.reference): the CE-T1, or the T1
    registered to the CE-T1 grid (the image predict, which has no CE-T1, can reproduce)."""
    if config["brainmask"]["reference"] == "ceT1w":
        return get_cet1w(wildcards)
    return path_of(
        rules.register_anat_to_cet1w.output.image, subject=wildcards.subject, modality="T1w"
    )


def get_dwi_inputs(wildcards):
    raw = get_raw_inputs(wildcards)
    return {key: raw[key] for key in ("dwi", "bval", "bvec")}


def get_adc_subject_regex(source):
    """The scans whose ADC comes from ``source``: ``dwi`` (fit_adc) or ``map`` (a given ADC
    map, convert_adc_map); the two rules make the same file, so each is held to its scans."""
    return _any_of(s for s, scan in SCANS.items() if scan.adc_source == source)


def get_adc_map_inputs(wildcards):
    """The given ADC map and, when the dataset has it, its JSON sidecar (MD or ADC)."""
    raw = get_raw_inputs(wildcards)
    inputs = {"adc_map": raw["adc"]}
    sidecar = adc_sidecar_path(raw["adc"])
    if sidecar.is_file():
        inputs["adc_sidecar"] = str(sidecar)
    return inputs


def get_adc_registration_inputs(wildcards):
    """What carries the ADC to the CE-T1: the DWI's b0 (DWI and bval), or nothing but the
    ADC map itself for a scan with a given map."""
    if get_scan(wildcards).adc_source != "dwi":
        return {}
    raw = get_raw_inputs(wildcards)
    return {"dwi": raw["dwi"], "bval": raw["bval"]}


def get_registration_subject_regex(declared):
    """ANTs registration (``declared`` False) or the checked identity (True) runs on every
    scan as ingest.coregistered says, never both (they make the same files)."""
    if config["ingest"]["coregistered"] == declared:
        return ingest.SCAN_ID_PATTERN
    return "(?!)"


def get_brainmask_method(wildcards):
    """The mask method of one scan (a param: only a changed declaration reruns the mask):
    brainmask.method, or for a dataset declared skull-stripped the dataset's own mask
    (``provided``) where it has one, else the image's nonzero region (``nonzero``)."""
    if not config["ingest"]["skull_stripped"]:
        return config["brainmask"]["method"]
    return "provided" if get_provided_brain_mask(wildcards) else "nonzero"


def get_provided_brain_mask(wildcards):
    """The dataset's own brain mask, used when ingest.skull_stripped (nothing otherwise)."""
    if not config["ingest"]["skull_stripped"]:
        return {}
    scan = get_converted_scan(wildcards)
    if scan.brain_mask is None:
        return {}
    return {"provided_mask": str(scan.brain_mask)}


def get_anat_image(wildcards):
    raw = get_raw_inputs(wildcards)
    if wildcards.modality.lower() not in raw:  # planned from the source, absent once converted
        raise ValueError(
            f"sub-{wildcards.subject}: {wildcards.modality} was planned but the converted "
            f"dataset {BIDS} has none (an import or conversion made before {wildcards.modality} "
            f"was declared or supported: delete {BIDS} and run again)"
        )
    return raw[wildcards.modality.lower()]


def get_phantom_truth(wildcards, *names):
    """Phantom ground truth of a subject (QC against the known answer); nothing for real data."""
    if not (is_demo() or Path(BIDS, phantom.TRUTH_DIR).is_dir()):
        return {}
    return get_phantom_truth_paths(wildcards.subject, *names)


def get_adc_truth(wildcards):
    return get_phantom_truth(wildcards, "true_adc")


def get_mask_truth(wildcards):
    return get_phantom_truth(wildcards, "true_mask")


def get_registration_truth(wildcards):
    return get_phantom_truth(wildcards, "true_transforms", "true_mask")


def get_registered_images(wildcards):
    """The subject's images on the native CE-T1 grid, by modality (missing ones left out)."""
    subject = wildcards.subject
    images = {"ceT1w": get_cet1w(wildcards)}
    for modality in get_modalities(get_scan(wildcards)):
        if modality == "adc":
            images[modality] = path_of(rules.register_dwi_to_cet1w.output.image, subject=subject)
        elif modality != "ceT1w":
            images[modality] = path_of(
                rules.register_anat_to_cet1w.output.image, subject=subject, modality=modality
            )
    return images


def get_normalise_options():
    """The normalisation's options beyond its method (what the preprocessing record stores)."""
    return preprocessing.normalise_image_options(config["normalise"])


def get_image_to_normalise(wildcards):
    images = get_registered_images(wildcards)
    if wildcards.modality not in images:
        raise ValueError(f"sub-{wildcards.subject} has no {wildcards.modality} image")
    return images[wildcards.modality]


def get_subject_targets(scan_id):
    """Every per-subject output of the preprocessing stages for one scan."""
    modalities = get_modalities(SCANS[scan_id])
    norm = paths_of(
        rules.normalise_to_model_grid.output.image, subject=scan_id, modality=modalities
    )
    return norm + [
        path_of(rules.resample_mask_to_model_grid.output.mask, subject=scan_id),
        path_of(rules.plot_qc_montage.output.png, subject=scan_id),
    ]


QC_STAGES = ("adc", "registration", "brainmask", "normalise", "images")


def get_stored_image(wildcards):
    """An image as the dataset stores it (its data type, range and slice thickness): the raw
    file, or for the ADC the map as fitted or converted, on the DWI's grid."""
    if wildcards.modality == "adc":
        return path_of(rules.fit_adc.output.adc, subject=wildcards.subject)
    return get_raw_inputs(wildcards)[wildcards.modality.lower()]


def get_qc_flagging(wildcards):
    """The thresholds that flag a stage's gathered table (a param: only the images table is
    re-flagged when they change)."""
    if wildcards.stage != "images":
        return {}
    return {"thresholds": config["qc"], "skull_stripped": config["ingest"]["skull_stripped"]}


def get_qc_rows(wildcards):
    """The per-job QC rows of one stage, for the subjects (and images) that stage runs on."""
    rows = []
    for scan_id, scan in SCANS.items():
        modalities = get_modalities(scan)
        anat = [m for m in modalities if m in ("T1w", "T2w", ingest.FLAIR)]
        dwi = "adc" in modalities
        per_job = {
            "adc": [(rules.fit_adc.output.qc, {})] if dwi else [],
            "brainmask": [(rules.mask_brain.output.qc, {})],
            "registration": [
                (rules.register_anat_to_cet1w.output.qc, {"modality": m}) for m in anat
            ]
            + ([(rules.register_dwi_to_cet1w.output.qc, {})] if dwi else []),
            "normalise": [
                (rules.normalise_to_model_grid.output.qc, {"modality": m}) for m in modalities
            ],
            "images": [(rules.check_image_quality.output.qc, {"modality": m}) for m in modalities],
        }[wildcards.stage]
        rows += [path_of(qc, subject=scan_id, **job) for qc, job in per_job]
    return rows


def get_split(scan_id):
    scan = SCANS[scan_id]
    return splits.scan_split(scan.set, scan.participant, SPLIT_FRACTIONS)


def get_training_caches(split):
    """Input function: the training caches of every Set A scan in ``split`` (train, validation)."""

    def caches(wildcards):
        scan_ids = [scan_id for scan_id in SCANS if get_split(scan_id) == split]
        return paths_of(rules.cache_training_subject.output.cache, subject=scan_ids)

    return caches


def get_model_grid_images(wildcards):
    """The subject's normalised model-grid images, by modality (missing ones left out)."""
    # the modalities of get_registered_images, without resolving raw paths (this is called
    # while parsing, before a DICOM conversion or an import has written them)
    modalities = get_modalities(get_scan(wildcards))
    return {
        m: path_of(
            rules.normalise_to_model_grid.output.image, subject=wildcards.subject, modality=m
        )
        for m in ["ceT1w"] + [m for m in modalities if m != "ceT1w"]
    }


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
    if trunk is None:
        return {}
    return {"trunk": path_of(rules.train_trunk.output.checkpoint, trunk=trunk)}


def get_preprocessing_record():
    """The settings that made the training images; the training job resolves them (with the
    masks' sidecars) into the record every checkpoint stores."""
    return preprocessing.requested_settings(config)


def get_training_mask_sidecars(wildcards):
    """The brain-mask sidecars of the scans a training run reads (train and validation): they
    say which method ran (``auto`` resolved) and on which image."""
    scan_ids = [s for s in SCANS if get_split(s) in ("train", "validation")]
    return paths_of(rules.mask_brain.output.sidecar, subject=scan_ids)


def get_training_adc_qc(wildcards):
    """The ADC QC rows of the scans a training run reads (train and validation) that have an
    ADC: which shells it was fitted from (or that it was a given map), for the record."""
    scan_ids = [
        s
        for s, scan in SCANS.items()
        if get_split(s) in ("train", "validation") and scan.adc_source is not None
    ]
    return paths_of(rules.fit_adc.output.qc, subject=scan_ids)


def get_sweep_tags(wildcards):
    """The sweeps an experiment is a point of (its MLflow run goes under the first's parent)."""
    return [sweep for sweep, _ in EXPERIMENTS[wildcards.experiment].sweeps]


EVALUATION_SPLITS = ("test",)  # the reported sets: Set A test and Set B; validation never


def get_evaluation_scans(target="ceT1w"):
    """The reported scans (Set A test, Set B) that have ``target`` to score against."""
    scans = [scan_id for scan_id in SCANS if get_split(scan_id) in EVALUATION_SPLITS]
    return [s for s in scans if target in get_modalities(SCANS[s])]


def get_reference_runs():
    """The reference's runs: its first seed, then its further seeds."""
    return experiments.seed_variants(EXPERIMENTS, config["evaluation"]["reference"])


def get_evaluated_models():
    """Evaluated name -> (experiment or None for a floor, input condition or "full"); every
    seed of the reference is evaluated under every input condition."""
    models = {name: (name, "full") for name, e in EXPERIMENTS.items() if e.target == "ceT1w"}
    for condition in config["evaluation"]["conditions"]:
        for reference in get_reference_runs():
            models[experiments.variant_name(reference, condition)] = (reference, condition)
    for floor in config["evaluation"]["floors"]:
        models[experiments.FLOOR_PREFIX + floor] = (None, "full")
    return models


EVALUATED = get_evaluated_models()


def get_cascade_models():
    return [name for name, e in EXPERIMENTS.items() if e.target != "ceT1w"]


def get_configurations():
    """Evaluated name -> the configuration it is a seed of (the tables average its seeds)."""
    return {row["model"]: row["configuration"] for row in get_catalog()}


def is_first_seed(model):
    """An evaluated model that is its configuration's first seed (or a floor)."""
    experiment, _ = EVALUATED[model]
    return experiment is None or EXPERIMENTS[experiment].seed_of is None


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
    return get_evaluated_checkpoint_path(getattr(wildcards, "experiment", None) or wildcards.model)


def get_evaluated_checkpoint_path(experiment):
    """The experiment's checkpoint that evaluation uses and release registers (final or best)."""
    which = config["evaluation"]["checkpoint"]
    return path_of(getattr(rules.train_model.output, which), experiment=experiment)


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
    return (
        f"{EVAL}/{model}/sub-{subject}/sub-{subject}_space-model_desc-synthetic_{modality}.nii.gz"
    )


def get_model_target(model):
    """What an evaluated model synthesizes (a cascade model: its input modality)."""
    experiment = EXPERIMENTS.get(model)
    return experiment.target if experiment is not None else "ceT1w"


def get_scored_image(wildcards):
    target = get_model_target(wildcards.model)
    return {
        "image": get_synthetic_path(wildcards.model, wildcards.subject, target),
        "target": path_of(
            rules.normalise_to_model_grid.output.image, subject=wildcards.subject, modality=target
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
    return {
        "tumor_mask": path_of(
            rules.resample_tumor_mask_to_model_grid.output.mask, subject=wildcards.subject
        )
    }


def get_validation_scans():
    """The Set A validation scans: they choose (checkpoints, the enhancement threshold), never
    report."""
    return [scan_id for scan_id in SCANS if get_split(scan_id) == "validation"]


def get_threshold_inputs(wildcards):
    """Per validation scan with enhancement truth, aligned lists: the model's synthetic CE-T1,
    the normalised T1, the brain mask and the truth's class map (the enhancement threshold is
    chosen on them only)."""
    scans = get_selection_scans()
    norm = rules.normalise_to_model_grid.output.image
    return {
        "synthetic": [get_synthetic_path(wildcards.model, s) for s in scans],
        "t1": [path_of(norm, subject=s, modality="T1w") for s in scans],
        "masks": paths_of(rules.resample_mask_to_model_grid.output.mask, subject=scans),
        "classes": paths_of(
            rules.resample_enhancing_truth_to_model_grid.output.classes, subject=scans
        ),
    }


def get_enhancement_inputs(wildcards):
    """What the enhancement endpoints of a CE-T1 model read: the normalised T1, the model's
    threshold and, where the subject has one, its enhancement truth; nothing for a cascade
    model."""
    if wildcards.model not in EVALUATED:
        return {}
    inputs = {
        "t1": path_of(
            rules.normalise_to_model_grid.output.image, subject=wildcards.subject, modality="T1w"
        ),
        "threshold": path_of(
            rules.choose_enhancement_threshold.output.threshold, model=wildcards.model
        ),
    }
    if has_lesion_truth(wildcards.subject):
        truth = rules.resample_enhancing_truth_to_model_grid.output
        for key in ("classes", "instances", "sidecar"):
            inputs[f"truth_{key}"] = path_of(truth[key], subject=wildcards.subject)
    return inputs


def has_lesion_truth(scan_id):
    """Whether a scan has enhancement truth: the phantom's agent map and lesion labels, or a
    real scan's expert lesion labels (known before any job runs)."""
    return is_phantom_truth(scan_id) or SCANS[scan_id].tumor_dseg is not None


def is_phantom_truth(scan_id):
    return bool(get_phantom_truth(SimpleNamespace(subject=scan_id), "true_lesion_dseg"))


def get_lesion_truth_inputs(wildcards):
    """A scan's enhancement truth on its native CE-T1 grid: the phantom's lesion labels, agent
    map and lesion instances, or the expert lesion labels with their JSON."""
    if is_phantom_truth(wildcards.subject):
        truth = get_phantom_truth(
            wildcards,
            "true_lesion_dseg",
            "true_agent",
            "true_lesion_instances",
            "true_lesion_instances_sidecar",
        )
        keys = ("dseg", "agent", "instances", "instances_sidecar")
        return dict(zip(keys, truth.values()))
    dseg = get_converted_scan(wildcards).tumor_dseg
    if dseg is None:
        return {}
    sidecar = Path(str(dseg).replace(".nii.gz", ".json"))
    if is_import() or sidecar.is_file():
        return {"dseg": str(dseg), "dseg_sidecar": str(sidecar)}
    return {"dseg": str(dseg)}


def get_evaluation_metrics(wildcards):
    """Every scored (model, subject): the CE-T1 models, conditions and floors, the cascade."""
    pairs = [(model, s) for model in EVALUATED for s in get_evaluation_scans()]
    for model in get_cascade_models():
        pairs += [(model, s) for s in get_evaluation_scans(EXPERIMENTS[model].target)]
    metrics = rules.score_evaluation_subject.output.metrics
    return [path_of(metrics, model=model, subject=s) for model, s in pairs]


def get_selection_scans():
    """The validation scans with enhancement truth: they choose thresholds and recipes."""
    return [s for s in get_validation_scans() if has_lesion_truth(s)]


def get_validation_metrics(wildcards=None):
    """Every CE-T1 model's threshold-free scores on each validation scan with truth."""
    metrics = rules.score_validation_subject.output.metrics
    return [path_of(metrics, model=m, subject=s) for m in EVALUATED for s in get_selection_scans()]


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
        images["mask"] = path_of(rules.resample_mask_to_model_grid.output.mask, subject=scan_id)
        subjects.append(images)
    return subjects


def get_regression_training_images(wildcards):
    return [path for images in get_regression_subjects() for path in images.values()]


PANEL_SUBJECTS = 3  # reported subjects drawn in the Fig. 4-like panel (Set B first)


def get_panel_layout():
    """Subject -> {panel: image, "slice_mask": tumor or brain mask} for the synthesis panel."""
    reported = get_evaluation_scans()
    chosen = sorted(reported, key=lambda s: (SCANS[s].set != "B", s))[:PANEL_SUBJECTS]
    models = [m for m, (e, v) in EVALUATED.items() if v == "full" and is_first_seed(m)]
    layout = {}
    for scan_id in chosen:
        images = get_model_grid_images(SimpleNamespace(subject=scan_id))
        panels = {m: images[m] for m in ("T1w", "T2w", "adc") if m in images}
        panels["truth"] = images["ceT1w"]
        panels.update({model: get_synthetic_path(model, scan_id) for model in models})
        if SCANS[scan_id].tumor_mask is not None:
            mask = rules.resample_tumor_mask_to_model_grid.output.mask
        else:
            mask = rules.resample_mask_to_model_grid.output.mask
        panels["slice_mask"] = path_of(mask, subject=scan_id)
        layout[scan_id] = panels
    return layout


def get_panel_images(wildcards):
    return [path for panels in get_panel_layout().values() for path in panels.values()]


def get_lesion_panel_layout():
    """Subject -> {image key -> path} for the zoomed lesion panels: every reported scan with
    enhancement truth, its model-grid inputs, truth and each full-input model's synthesis."""
    models = [m for m, (e, v) in EVALUATED.items() if v == "full"]
    truth = rules.resample_enhancing_truth_to_model_grid.output
    layout = {}
    for scan_id in get_evaluation_scans():
        if not has_lesion_truth(scan_id):
            continue
        images = get_model_grid_images(SimpleNamespace(subject=scan_id))
        panels = {m: images[m] for m in ("T1w", "T2w", "adc") if m in images}
        panels["truth"] = images["ceT1w"]
        panels["classes"] = path_of(truth.classes, subject=scan_id)
        panels["instances"] = path_of(truth.instances, subject=scan_id)
        panels["lesions_sidecar"] = path_of(truth.sidecar, subject=scan_id)
        panels.update({model: get_synthetic_path(model, scan_id) for model in models})
        layout[scan_id] = panels
    return layout


def get_lesion_panel_images(wildcards):
    return [path for panels in get_lesion_panel_layout().values() for path in panels.values()]


def get_study_targets():
    """The phantom study's outputs: the evaluation tables, the paper's tables and figures."""
    return [
        path_of(rules.tabulate_evaluation.output.tables),
        path_of(rules.tabulate_paper.output.tables),
        path_of(rules.plot_synthesis_panel.output.panel),
        path_of(rules.plot_lesion_sensitivity.output.figure),
        *([path_of(rules.plot_lesion_panels.output.panel)] if get_lesion_panel_layout() else []),
        *([path_of(rules.tabulate_validation.output.summary)] if get_selection_scans() else []),
    ]


def get_release_inputs(wildcards):
    """The experiment's evaluated checkpoint, and the evaluation summary when it is evaluated;
    the cascade models' evaluated checkpoints (cascade_T2w, cascade_adc) for the inputs it takes,
    when the cascade is trained."""
    inputs = {"checkpoint": get_evaluated_checkpoint(wildcards)}
    if get_evaluation_scans() and wildcards.experiment in EVALUATED:
        inputs["summary"] = path_of(rules.tabulate_evaluation.output.summary)
    released = EXPERIMENTS.get(wildcards.experiment)
    takes = released.settings.get("modalities", ()) if released is not None else ()
    for cascade in get_cascade_models():
        target = EXPERIMENTS[cascade].target
        if target in takes:
            inputs[f"cascade_{target}"] = get_evaluated_checkpoint_path(cascade)
    return inputs


def get_registered_name(wildcards):
    return f"{config['release']['registered_model_prefix']}-{wildcards.experiment}"


def get_ingest_reports(wildcards=None):
    return paths_of(rules.validate_subject.output.report, subject=list(SCANS))


def get_written_ingest_reports():
    """Every ingest report on disk, of subjects in the run or not (the ingest table's rows)."""
    pattern = path_of(rules.validate_subject.output.report, subject="*")
    return sorted(Path(path) for path in glob.glob(pattern))


def get_final_targets():
    targets = [path_of(rules.assign_sets.output.sets)]
    if is_demo():
        targets.append(path_of(rules.make_demo_dataset_files.output.participants))
    targets += paths_of(rules.tabulate_qc.output.table, stage=list(QC_STAGES))
    for scan_id in SCANS:
        targets += get_subject_targets(scan_id)
    targets += paths_of(rules.train_model.output.final, experiment=list(EXPERIMENTS))
    if get_evaluation_scans() and EVALUATED:
        targets += get_study_targets()
    targets += paths_of(rules.release_model.output.release, experiment=list(config["experiments"]))
    return targets


def get_status_scans():
    """The run's scans as the status table knows them before any of their jobs ran."""
    return [
        status.ScanInfo(
            scan_id,
            participant=scan.participant,
            session=scan.session,
            set=scan.set,
            split=get_split(scan_id),
            modalities=get_status_modalities(scan),
            tumor_mask=scan.tumor_mask is not None,
            phantom_truth=has_lesion_truth(scan_id),
        )
        for scan_id, scan in SCANS.items()
    ]


def get_status_modalities(scan):
    """The scan's images as its ingest report will list them (the FLAIR only when read)."""
    present = scan.available_modalities()
    return tuple(m for m in present if m != ingest.FLAIR or is_flair_declared())


def refresh_status():
    """qc/status.tsv, every scan x stage, refreshed at the end of every run (a side file: it
    describes the run, so no job makes it). It must never mask the run's own outcome."""
    try:
        status.write_status(RESULTS, get_status_scans(), list(EVALUATED) + get_cascade_models())
    except Exception as err:
        print(f"warning: {QC}/status.tsv not refreshed: {one_line_error(err)}", file=sys.stderr)


SPOOL = run_spool.spool_dir(RESULTS)


def send_and_end_runs():
    """The runs short jobs spooled go to the store; this invocation's runs left RUNNING by a job
    killed outright (SIGKILL) end KILLED. With --immediate-submit the jobs outlive this process:
    only finished runs are sent (`cesynth send-runs` sends the rest). Never masks the outcome."""
    over = not workflow.remote_execution_settings.immediate_submit
    try:
        run_spool.send_spool(SPOOL, end_running="all" if over else "none")
        if over:
            tracking.end_stale_runs(TRACKING_URI, config["mlflow"]["experiment"])
    except Exception as err:
        print(f"warning: MLflow runs not sent or ended: {one_line_error(err)}", file=sys.stderr)


def send_runs_left_by_earlier_runs():
    """Runs an earlier invocation spooled and did not send (it was killed) go to the store;
    a failure only warns, as the jobs of this run spool theirs all the same."""
    try:
        run_spool.send_spool(SPOOL, end_running="others")
    except Exception as err:
        print(f"warning: spooled MLflow runs not sent: {one_line_error(err)}", file=sys.stderr)


onstart:
    tracking.init_store(TRACKING_URI, config["mlflow"]["experiment"])
    tracking.sweep_parent_runs(
        TRACKING_URI,
        config["mlflow"]["experiment"],
        list(experiments.switched_on(config["sweeps"])),
    )
    send_runs_left_by_earlier_runs()


onsuccess:
    ingest_report.tabulate_reports(
        get_written_ingest_reports(),
        f"{QC}/ingest.tsv",
        SPLIT_FRACTIONS,
    )
    refresh_status()
    send_and_end_runs()


onerror:
    ingest_report.tabulate_reports(
        get_written_ingest_reports(),
        f"{QC}/ingest.tsv",
        SPLIT_FRACTIONS,
    )
    refresh_status()
    send_and_end_runs()
