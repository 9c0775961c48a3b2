"""A job described without Snakemake runs as one MLflow run; its thread limit reaches every
library that starts threads."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from cesynth.jobs import Job

THREAD_VARIABLES = ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "OPENBLAS_NUM_THREADS")


def _threads_after_limit(threads: object, import_torch_first: bool) -> dict:
    """Environment and torch's thread count in a fresh interpreter after ``limit_threads``."""
    code = "\n".join([
        "import json, os, sys",
        "import torch" if import_torch_first else "",
        "from cesynth.jobs import limit_threads",
        f"limit_threads({threads!r})",
        "import torch",
        f"print(json.dumps({{v: os.environ[v] for v in {THREAD_VARIABLES!r}}}"
        " | {'torch': torch.get_num_threads()}))",
    ])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120)
    return json.loads(result.stdout)


def test_limit_threads_sets_itk_openmp_and_blas_and_torch():
    seen = _threads_after_limit(1, import_torch_first=True)
    assert {seen[v] for v in THREAD_VARIABLES} == {"1"}
    assert seen["torch"] == 1


@pytest.mark.parametrize("threads, expected", [(0, "1"), ("3", "3")])
def test_limit_threads_takes_at_least_one_thread(threads, expected):
    seen = _threads_after_limit(threads, import_torch_first=False)
    assert {seen[v] for v in THREAD_VARIABLES} == {expected}


# A job as a workflow script runs it, with the job's log (argv[1]), tracking URI (argv[2]) and
# results folder (argv[3]), as the workflow exports them.
_JOB = """
import json, os, sys
os.environ["CESYNTH_TRACKING_URI"] = sys.argv[2]
os.environ["CESYNTH_RESULTS_DIR"] = sys.argv[3]
from cesynth.jobs import Job, run_job

run_job(Job("fit_adc", {"subject": 7}, sys.argv[1], threads=3), lambda: {"n_voxels": 5},
        params={"min_adc": 0.0})
print(json.dumps({"omp": os.environ["OMP_NUM_THREADS"],
                  "imported": sorted(m for m in ("mlflow", "nibabel", "pandas", "torch")
                                     if m in sys.modules)}), file=sys.__stdout__)
"""


def test_run_job_takes_a_job_without_snakemake(tmp_path):
    import mlflow

    from cesynth import run_spool

    log, uri = tmp_path / "logs" / "fit_adc.log", f"sqlite:///{tmp_path / 'mlflow.db'}"
    results = tmp_path / "results"
    result = subprocess.run([sys.executable, "-c", _JOB, str(log), uri, str(results)],
                            capture_output=True, text=True, check=True, timeout=300)
    # a short job imports nothing it does not use: its run waits in the spool
    assert json.loads(result.stdout.splitlines()[-1]) == {"omp": "3", "imported": []}
    assert "cesynth: done: fit_adc {'subject': '7'}" in log.read_text()
    assert run_spool.send_spool(run_spool.spool_dir(results), end_running="none") == 1
    mlflow.set_tracking_uri(uri)
    [run] = mlflow.search_runs(experiment_names=["cesynth"], output_format="list")
    assert run.info.run_name == "fit_adc[subject=7]"
    assert run.data.tags["cesynth.wildcard.subject"] == "7"
    assert run.data.metrics == {"n_voxels": 5.0}
    assert run.data.params == {"min_adc": "0.0"}


def test_a_job_is_frozen_and_logs_to_stderr_by_default():
    job = Job("assign_sets")
    assert (job.wildcards, job.log, job.threads) == ({}, None, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.threads = 4


def test_a_job_is_read_from_what_a_snakemake_script_object_holds():
    # Snakemake's Log and Wildcards are list-like and mapping-like; a script object has no more
    script_object = SimpleNamespace(rule="fit_adc", wildcards={"subject": "07"},
                                    log=["logs/fit_adc/sub-07.log"], threads=2)
    assert Job.of(script_object) == Job("fit_adc", {"subject": "07"}, "logs/fit_adc/sub-07.log", 2)
    script_object.log = []
    assert Job.of(script_object).log is None
