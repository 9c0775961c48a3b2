"""The rules' conda environments (envs/*.yaml) hold what `pip install -e .` installs.

The fast tests compare every environment file with the versions installed here: exact for mlflow,
dcm2niix, antspyx and torch, the same major.minor for the rest (tests/helpers/environments.py).
The slow tests build each environment's Python packages in a virtualenv of its own (conda-only
FSL tools left out: no conda channel is reachable here). From each they log a run to a store that
this install created and import what the environment's rules import; and one real
`snakemake --use-conda` run of the small demo to its training trunk, with a stand-in for the
`conda` command that gives every rule the virtualenv of its environment file
(tests/helpers/conda_standin.py), runs the jobs of all four environments, each in its own, and
their MLflow runs reach that store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from helpers.environments import (
    CONDA_ONLY,
    ENVS,
    PROBE_VARIABLE,
    REPO,
    add_interpreter_probe,
    import_names,
    pin_problems,
    read_pins,
    rule_environments,
    rule_scripts,
    script_imports,
    write_conda_standin,
)
from helpers.workflow import CESYNTH, snakemake

ENV_FILES = sorted(ENVS.glob("*.yaml"))


def test_every_environment_pins_what_the_install_resolves():
    assert ENV_FILES, "no envs/*.yaml"
    problems = pin_problems(ENV_FILES)
    assert problems == [], "envs/*.yaml differ from the pip install (pyproject.toml):\n" + \
        "\n".join(problems)


def test_the_environments_pin_the_packages_the_issue_names():
    pinned = {pin.distribution for path in ENV_FILES for pin in read_pins(path)
              if pin.version is not None}
    assert {"mlflow", "pandas", "numpy", "scipy", "nibabel", "nilearn", "matplotlib",
            "pydicom", "dcm2niix", "antspyx", "torch", "deepbet", "pytorch-msssim", "PyYAML",
            "tqdm"} <= pinned


def test_every_rule_environment_is_a_file_here():
    assert set(rule_scripts()) == {path.name for path in ENV_FILES}


def _copy_envs(tmp_path: Path) -> Path:
    copy = tmp_path / "envs"
    shutil.copytree(ENVS, copy)
    return copy


@pytest.mark.parametrize(("file", "pinned", "changed"), [
    ("cesynth.yaml", "mlflow==3.18.0", "mlflow==3.5.0"),  # the issue's case, pip section
    ("torch.yaml", "torch==2.13.0", "torch==2.13.1"),  # exact: a patch release is a difference
    ("ants.yaml", "pandas=3.1", "pandas=2.3"),  # major.minor, conda section
    ("fsl.yaml", "matplotlib-base=3.11", "matplotlib-base=3.10"),  # conda name -> matplotlib
    ("cesynth.yaml", "pyyaml=6.0", "pyyaml>=6"),  # no version fixed
    ("fsl.yaml", "fastremap==1.21.0", "fastremap"),
])
def test_the_checker_finds_one_changed_pin(tmp_path, file, pinned, changed):
    envs = _copy_envs(tmp_path)
    assert pin_problems(sorted(envs.glob("*.yaml"))) == []
    text = (envs / file).read_text()
    assert pinned in text
    (envs / file).write_text(text.replace(pinned, changed))
    problems = pin_problems(sorted(envs.glob("*.yaml")))
    assert len(problems) == 1 and problems[0].startswith(f"{file}: {changed}:"), problems


def test_the_checker_compares_exact_and_major_minor_pins(tmp_path):
    envs = _copy_envs(tmp_path)
    (envs / "extra.yaml").write_text(yaml.safe_dump({"dependencies": [
        "python=3.11", "pandas=3.1", "mlflow=3.18.0", {"pip": ["torch==2.13.0", "tqdm==4.70.*"]},
    ]}))
    versions = {"pandas": "3.1.9", "mlflow": "3.18.0", "torch": "2.13.0+cu128", "tqdm": "4.70.0"}
    assert pin_problems([envs / "extra.yaml"], versions.__getitem__) == []
    for distribution, other in [("mlflow", "3.18.1"), ("pandas", "3.2.0"), ("torch", "2.13.1"),
                                ("tqdm", "5.70.0")]:
        problems = pin_problems([envs / "extra.yaml"],
                                {**versions, distribution: other}.__getitem__)
        assert len(problems) == 1 and other in problems[0], (distribution, problems)


def test_the_checker_refuses_a_package_outside_the_install(tmp_path):
    envs = _copy_envs(tmp_path)
    text = (envs / "ants.yaml").read_text()
    (envs / "ants.yaml").write_text(text.replace("  - pip\n", "  - no-such-package=1.0\n  - pip\n"))
    assert pin_problems([envs / "ants.yaml"]) == [
        "ants.yaml: no-such-package=1.0: no-such-package is not in the pip install; add it to "
        "pyproject.toml or to OUTSIDE_THE_INSTALL"]


def test_the_checker_refuses_a_package_listed_twice(tmp_path):
    envs = _copy_envs(tmp_path)
    text = (envs / "torch.yaml").read_text()
    pip_line = "      - torch==2.13.0\n"
    twice = text.replace(pip_line, pip_line + "      - mlflow==3.18.0\n")
    (envs / "torch.yaml").write_text(twice)
    assert pin_problems([envs / "torch.yaml"]) == [
        "torch.yaml: mlflow==3.18.0: mlflow is listed twice"]


# --- a job of each environment against the workflow's store ---------------------------------

EXPERIMENT = "environment-check"
LOG_A_RUN = """
import sys, mlflow
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment(sys.argv[2])
with mlflow.start_run(run_name=sys.argv[3]) as run:
    mlflow.log_metric("env_check", 1.0, step=1)
print(run.info.run_id, mlflow.__version__)
"""
IMPORT_ALL = "import importlib, sys\nfor name in sys.argv[1:]: importlib.import_module(name)\n"


def _requirements(path: Path) -> list[str]:
    """The file's packages as pip installs them; conda-only FSL tools left out."""
    return sorted(pin.pip_requirement for pin in read_pins(path) if pin.name not in CONDA_ONLY)


@pytest.fixture(scope="module")
def venvs(tmp_path_factory):
    """Environment file -> the python of a virtualenv with its Python pins; one per distinct set.
    The four take about 6 GB; they are left to pytest's cleanup of old temporary folders (it keeps
    the last three sessions'), as removing them took 5 minutes on the 2 busy cores' disk."""
    root = tmp_path_factory.mktemp("env-venvs")
    built: dict[str, Path] = {}

    def build(path: Path) -> Path:
        requirements = _requirements(path)
        key = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:12]
        if key not in built:
            venv = root / key
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
            python = venv / "bin" / "python"
            install = subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                 "--prefer-binary", "--no-compile", *requirements],
                capture_output=True, text=True, timeout=900)
            errors = [line for line in install.stderr.splitlines()
                      if not line.startswith("WARNING: Location")]  # this machine's local indexes
            assert install.returncode == 0, (path.name, "\n".join(errors)[-3000:])
            add_interpreter_probe(python)
            built[key] = python
        return built[key]

    return build


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """The workflow's default store (SQLite under results/), created by this install's MLflow."""
    from cesynth import tracking

    results = tmp_path_factory.mktemp("results")
    uri = tracking.default_tracking_uri(results)
    tracking.init_store(uri, EXPERIMENT)
    return uri


def _env_run(python: Path, *args: str, code: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items()
                   if k not in {"MLFLOW_TRACKING_URI", "PYTHONPATH", "VIRTUAL_ENV"}}
    environment["PYTHONPATH"] = str(REPO / "src")  # as workflow_scripts put ../src on sys.path
    return subprocess.run([str(python), "-c", code, *args], capture_output=True, text=True,
                          env=environment, cwd=REPO, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("path", ENV_FILES, ids=[path.stem for path in ENV_FILES])
def test_a_job_in_the_environment_logs_to_the_workflows_store(path, venvs, store):
    import mlflow

    python = venvs(path)
    logged = _env_run(python, store, EXPERIMENT, path.stem, code=LOG_A_RUN)
    assert logged.returncode == 0, logged.stderr[-3000:]
    run_id, client_version = logged.stdout.split()[-2:]
    assert client_version == mlflow.__version__
    run = mlflow.MlflowClient(tracking_uri=store).get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == path.stem
    assert run.data.metrics == {"env_check": 1.0}

    modules = [*import_names(read_pins(path)), *script_imports(rule_scripts()[path.name])]
    imported = _env_run(python, *modules, code=IMPORT_ALL)
    assert imported.returncode == 0, (modules, imported.stderr[-3000:])
    versions = _env_run(python, code="import importlib.metadata as m, json; print(json.dumps("
                        "{d.metadata['Name']: d.version for d in m.distributions()}))")
    assert versions.returncode == 0, versions.stderr[-2000:]
    assert pin_problems([path], json.loads(versions.stdout).__getitem__) == []


# --- `snakemake --use-conda`: the jobs of every environment, each in its own -----------------

SMALL = REPO / "config" / "profiles" / "demo-small.yaml"


@pytest.fixture(scope="module")
def conda_run(venvs, store, tmp_path_factory) -> dict:
    """The small demo (3 phantom subjects) run to its training trunk with `--use-conda`, every
    environment the virtualenv built from its file, logging to ``store``: validation, ADC,
    normalisation and caches (cesynth.yaml), brain masks (fsl.yaml), registrations (ants.yaml)
    and the trunk's training, which logs live (torch.yaml)."""
    workdir = tmp_path_factory.mktemp("use-conda")
    standin = write_conda_standin(workdir / "conda",
                                  {path: venvs(path).parent.parent for path in ENV_FILES})
    bids = workdir / "bids"
    subprocess.run([CESYNTH, "phantom", "--out", str(bids), "--subjects", "3", "--set-b", "1",
                    "--voxel-mm", "4", "--seed", "7"], check=True, capture_output=True)
    config = workdir / "dataset.yaml"
    config.write_text(yaml.safe_dump({"bids_dir": str(bids), "results_dir": str(workdir / "out"),
                                      "demo": {"enabled": False}}))
    probe = workdir / "interpreters.tsv"
    result = snakemake(workdir, "--cores", "2", "--use-conda", "--until", "train_trunk",
                       "--configfile", str(SMALL), str(config), tracking_uri=store,
                       environment={"PATH": f"{standin}:{os.environ['PATH']}",
                                    PROBE_VARIABLE: str(probe)})
    lines = probe.read_text().splitlines() if probe.exists() else []
    return {"log": result.stderr, "interpreters": [line.split("\t") for line in lines]}


def _scripts_run(interpreters: list[list[str]]) -> list[tuple[str, Path]]:
    """(workflow script, interpreter prefix) of each script job the probe saw: Snakemake runs
    each job's script as its own .snakemake/scripts/tmp<id>.<script name>. (A virtualenv's
    interpreter may read its site-packages twice, through ``lib`` and ``lib64``, and so record
    a run twice.)"""
    jobs = {}
    for prefix, script in interpreters:
        path = Path(script)
        if path.parent.name == "scripts" and path.name.startswith("tmp") and "." in path.name:
            jobs[path] = (path.name.split(".", 1)[1], Path(prefix).resolve())
    return list(jobs.values())


@pytest.mark.slow
@pytest.mark.parametrize("path", ENV_FILES, ids=[path.stem for path in ENV_FILES])
def test_the_rules_of_the_environment_run_in_it_and_reach_the_workflows_store(
        path, conda_run, venvs, store):
    import mlflow

    venv = venvs(path).parent.parent.resolve()
    rules = {rule: script for rule, (env, script) in rule_environments().items()
             if env == path.name}
    jobs = [(script, prefix) for script, prefix in _scripts_run(conda_run["interpreters"])
            if script in rules.values()]
    assert jobs, (f"no job of {path.name} ran", conda_run["log"][-3000:])
    assert {prefix for _, prefix in jobs} == {venv}, jobs  # each in this environment
    client = mlflow.MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("cesynth").experiment_id])
    for script, count in Counter(script for script, _ in jobs).items():
        script_rules = {rule for rule, used in rules.items() if used == script}
        finished = [run for run in runs if run.data.tags["cesynth.rule"] in script_rules
                    and run.info.status == "FINISHED"]
        assert len(finished) == count, (script, count, len(finished))  # one run per job
