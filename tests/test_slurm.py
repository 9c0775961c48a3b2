"""The workflow on a real single-node SLURM cluster through `snakemake --profile profiles/slurm`.

The cluster is Debian's slurm-wlm and munge (installed when absent, as CI runs as root), started
by tests/helpers/slurm.py and stopped by PID. The SLURM executor plugin is what
`pip install -e ".[slurm]"` adds to this environment, installed into a folder that only the
workflow run sees (PYTHONPATH): once the plugin is importable, every `snakemake` start needs a
SLURM client and controller, which the rest of the suite must not depend on.

The DAG is the two-subject demo: both subjects' preprocessing, training (trunk and last stage),
evaluation of the Set B subject and the release, every job an `sbatch` except the bookkeeping
`localrules`. A training job submitted with `sbatch --requeue` gets `scancel --signal=TERM`
(what a time limit sends), is requeued and must end with the uninterrupted run's weights.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from helpers.checkpoints import small_cached_subject
from helpers.slurm import ClusterUnavailable, single_node_cluster
from helpers.waiting import wait_until
from helpers.workflow import REPO, SNAKEMAKE, dry_run_jobs, workflow_environment

from cesynth.checkpoint import CHECKPOINT_LATEST, read_checkpoint
from cesynth.settings import TrainSettings
from cesynth.train import train

pytestmark = pytest.mark.slow

CONFIG = {
    "demo": {"subjects": 2, "set_b_subjects": 1},
    # the training subject is the only Set A subject: no validation score for the gate's floor
    "release": {"gates": {"require_score": False}},
}
TARGET = "results-small/release/default.json"
# Without slurmdbd there is no sacct: poll squeue (the cluster keeps finished jobs 600 s).
STATUS_FLAGS = ["--slurm-status-command", "squeue",
                "--slurm-init-seconds-before-status-checks", "5"]


@pytest.fixture(scope="module")
def slurm_extra(tmp_path_factory) -> Path:
    """Exactly what `pip install -e ".[slurm]"` would add here, in a folder of its own."""
    target = tmp_path_factory.mktemp("slurm-extra")
    report = target.parent / "slurm-extra-report.json"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    resolve = subprocess.run([*pip, "install", "--dry-run", "--quiet", "--report", str(report),
                              "-e", f"{REPO}[slurm]"], capture_output=True, text=True,
                             timeout=600)
    assert resolve.returncode == 0, resolve.stderr[-2000:]
    pins = [f"{item['metadata']['name']}=={item['metadata']['version']}"
            for item in json.loads(report.read_text())["install"]
            if item["metadata"]["name"] != "cesynth"]
    assert any(pin.startswith("snakemake-executor-plugin-slurm==") for pin in pins), pins
    install = subprocess.run([*pip, "install", "--quiet", "--no-deps", "--target", str(target),
                              *pins], capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-2000:]
    return target


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        with single_node_cluster(tmp_path_factory.mktemp("slurm-spool")) as partition:
            yield partition
    except ClusterUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def cluster_run(cluster, slurm_extra, tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("slurm-run")
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    configs = ["--configfile", str(REPO / "config/profiles/demo-small.yaml"), str(config)]
    planned = dry_run_jobs(workdir, *configs, "--", TARGET)
    env = {**workflow_environment(), "PYTHONPATH": str(slurm_extra)}
    command = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *configs,
               "--profile", str(REPO / "profiles/slurm"), *STATUS_FLAGS, TARGET]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3000,
                            cwd=workdir)
    return {"workdir": workdir, "result": result, "planned": planned}


def test_the_dag_runs_to_the_release_on_slurm(cluster_run):
    result = cluster_run["result"]
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    release = json.loads((cluster_run["workdir"] / TARGET).read_text())
    assert release["gate"]["passed"] and release["version"] == 1
    metrics = list((cluster_run["workdir"] / "results-small/eval/default").rglob("*_metrics.json"))
    assert [p.name for p in metrics] == ["sub-02_metrics.json"]


def test_every_job_but_the_local_rules_was_an_sbatch_job(cluster_run):
    local = {"make_demo_dataset_files", "assign_sets", "tabulate_qc", "tabulate_evaluation",
             "tabulate_paper"}
    planned = {rule: n for rule, n in cluster_run["planned"].items() if rule not in local}
    # "Job 3 has been submitted with SLURM jobid 2 (log: .../slurm_logs/rule_fit_adc/01/2.log)."
    text = cluster_run["result"].stdout + cluster_run["result"].stderr
    submissions = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", text)
    submitted: dict[str, int] = {}
    for _, rule in submissions:
        submitted[rule] = submitted.get(rule, 0) + 1
    assert submitted == planned
    assert len({job_id for job_id, _ in submissions}) == sum(planned.values())


def test_every_mlflow_run_finished(cluster_run):
    store = f"sqlite:///{cluster_run['workdir'] / 'results-small' / 'mlflow.db'}"
    client = mlflow.MlflowClient(store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=1000)
    assert len(runs) == sum(cluster_run["planned"].values())  # one run per job
    assert {run.info.status for run in runs} == {"FINISHED"}


# ---------------------------------------------------------------- scancel --signal=TERM, requeue

TRAIN_SETTINGS = {
    "model": "hrfcn3d", "width_multiplier": 1 / 16, "blocks_per_module": 1,
    "stages": [[10, 1.0, 1.0, 1.0, 3e-3]], "patches_per_subject": 4, "batch_size": 3,
    "checkpoint_every_steps": 5, "seed": 7, "device": "cpu",
}
TRAIN_STEPS = 10 * 4  # 10 epochs x (3 subjects x 4 patches / batch 3)


def _squeue_state(job_id: str) -> str:
    found = subprocess.run(["squeue", "--noheader", "--states=all", "--jobs", job_id,
                            "--format=%T"], capture_output=True, text=True)
    return found.stdout.strip()


def _wait_for_state(job_id: str, states: set[str]) -> str:
    wait_until(lambda: _squeue_state(job_id) in states, poll_s=0.5)
    return _squeue_state(job_id)


def test_scancel_term_saves_and_the_requeued_job_resumes_to_the_same_weights(cluster, tmp_path):
    rng = np.random.default_rng(3)
    caches = [str(small_cached_subject(tmp_path, f"s{i}", rng)) for i in range(3)]
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(TRAIN_SETTINGS))
    out = tmp_path / "run"
    script = tmp_path / "train.sh"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} -m cesynth.train --train-cache "
                      f"{' '.join(caches)} --out {out} --settings {settings}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    submitted = subprocess.run(["sbatch", "--parsable", "--requeue", "--cpus-per-task=1",
                                f"--output={tmp_path / 'slurm-%j.log'}", str(script)],
                               capture_output=True, text=True, env=env, check=True)
    job_id = submitted.stdout.strip().split(";")[0]
    latest = out / CHECKPOINT_LATEST
    wait_until(latest.exists)
    subprocess.run(["scancel", "--batch", "--signal=TERM", job_id], check=True)
    assert _wait_for_state(job_id, {"FAILED", "COMPLETED"}) == "FAILED"  # exit 143 once saved
    stopped_at = read_checkpoint(latest)["global_step"]
    assert 0 < stopped_at < TRAIN_STEPS

    subprocess.run(["scontrol", "requeue", job_id], check=True)
    assert _wait_for_state(job_id, {"COMPLETED", "FAILED"}) == "COMPLETED"
    torch.set_num_threads(1)
    reference = train([Path(p) for p in caches], [], tmp_path / "uninterrupted",
                      TrainSettings.from_dict(TRAIN_SETTINGS))
    resumed = read_checkpoint(out / "checkpoint_final.pt")
    expected = read_checkpoint(reference["checkpoint_final"])
    assert resumed["global_step"] == expected["global_step"] == TRAIN_STEPS
    for name, weights in expected["model"].items():
        assert torch.equal(resumed["model"][name], weights), name
