"""Faults injected into running work: a disk that fills up, files in results/ damaged after they
were written. What each costs is in benchmarks/RESULTS.md, "Reliability".

The full disk is real: a small tmpfs mounted here (root only; skipped elsewhere with the reason),
filled to the last byte by a file while a preprocessing command or a training job writes to it.
The training job is stopped (SIGSTOP) as soon as its first checkpoint exists, the disk filled, and
the job continued, so its next write meets the full disk.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.checkpoints import small_cached_subject
from helpers.waiting import wait_until
from helpers.workflow import CESYNTH

from cesynth import integrity
from cesynth.checkpoint import CHECKPOINT_LATEST, read_checkpoint, write_checkpoint
from cesynth.io import InputError, load_nifti, save_nifti
from cesynth.settings import TrainSettings
from cesynth.train import train

SETTINGS = {
    "model": "hrfcn3d", "width_multiplier": 1 / 16, "blocks_per_module": 1,
    "stages": [[4, 1.0, 1.0, 1.0, 3e-3]], "patches_per_subject": 4, "batch_size": 3,
    "checkpoint_every_steps": 1, "seed": 5, "device": "cpu",
}
TOTAL_STEPS = 4 * 4  # 4 epochs x (3 subjects x 4 patches / batch 3)
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# A training job as the workflow's train_model runs it (run_job: the one-line error, the spooled
# MLflow run), without Snakemake.
TRAINING_JOB = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from cesynth.jobs import Job, run_job
    from cesynth.train import train_from_files

    torch.set_num_threads(1)
    spec = json.loads(Path(sys.argv[1]).read_text())
    run_job(Job("train_model", {"experiment": "default"}),
            lambda: train_from_files(spec["train"], [], spec["out"], spec["settings"]))
""")


# ---------------------------------------------------------------- a small real filesystem


@pytest.fixture
def small_fs(tmp_path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted under ``tmp_path``, unmounted at the end (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem to fill needs root")
    mount = tmp_path / "small-fs"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Fill ``folder``'s filesystem to the last byte with one file; return it."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for chunk in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as err:
                assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.fixture(scope="module")
def phantom_dwi(tmp_path_factory) -> dict[str, Path]:
    bids = tmp_path_factory.mktemp("phantom") / "bids"
    made = subprocess.run([CESYNTH, "phantom", "--out", str(bids), "--subjects", "1",
                           "--set-b", "0", "--voxel-mm", "6"], capture_output=True, text=True,
                          timeout=600)
    assert made.returncode == 0, made.stderr
    dwi = bids / "sub-01" / "dwi" / "sub-01_dwi"
    return {key: Path(f"{dwi}.{ext}") for key, ext in
            (("dwi", "nii.gz"), ("bval", "bval"), ("bvec", "bvec"))}


def test_a_full_disk_during_preprocessing_names_the_file_and_keeps_the_previous_one(
        small_fs, phantom_dwi):
    out = small_fs / "preproc" / "sub-01_adc.nii.gz"
    command = [CESYNTH, "adc", "--dwi", str(phantom_dwi["dwi"]), "--bval",
               str(phantom_dwi["bval"]), "--bvec", str(phantom_dwi["bvec"]), "--out", str(out)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    before = out.read_bytes()
    fill(small_fs)

    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1
    assert error_lines(again.stderr) == [
        f"error: {out}: cannot be written: No space left on device on {out.parent} "
        "(the previous file is unchanged)"]
    assert "Traceback" not in again.stderr
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary left


@pytest.fixture(scope="module")
def training_caches(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("training-subjects")
    rng = np.random.default_rng(1)
    return [str(small_cached_subject(root, f"s{i}", rng)) for i in range(3)]


def _start_training_job(folder: Path, caches: list[str], out: Path,
                        env: dict[str, str]) -> subprocess.Popen:
    script, spec = folder / "training_job.py", folder / "spec.json"
    script.write_text(TRAINING_JOB)
    spec.write_text(json.dumps({"train": caches, "out": str(out), "settings": SETTINGS}))
    return subprocess.Popen([sys.executable, str(script), str(spec)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _stop_at_first_checkpoint(job: subprocess.Popen, latest: Path) -> None:
    def alive() -> None:
        assert job.poll() is None, job.communicate()[1][-3000:]

    wait_until(latest.exists, still_running=alive, poll_s=0.01)
    job.send_signal(signal.SIGSTOP)


@pytest.mark.slow  # two training jobs and a reference run: about a minute on 2 busy cores
def test_a_full_disk_during_a_checkpoint_write_keeps_the_last_checkpoint_and_loses_nothing(
        small_fs, training_caches, tmp_path):
    results = small_fs / "results"
    out = results / "train" / "default"
    env = {**SUBPROCESS_ENV, integrity.ENV_RESULTS_DIR: str(results)}
    job = _start_training_job(tmp_path, training_caches, out, env)
    _stop_at_first_checkpoint(job, out / CHECKPOINT_LATEST)
    filler = fill(small_fs)
    job.send_signal(signal.SIGCONT)
    _, stderr = job.communicate(timeout=600)

    assert job.returncode == 1, stderr[-3000:]
    (line,) = error_lines(stderr)
    assert line.startswith(f"error: {out}/checkpoint_") and \
        line.endswith(f": cannot be written: No space left on device on {out} "
                      "(the previous file is unchanged)"), line
    assert "Traceback" not in stderr
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(integrity.ENV_RESULTS_DIR, str(results))
        kept = read_checkpoint(out / CHECKPOINT_LATEST)  # intact: its recorded checksum holds
    assert 0 < kept["global_step"] < TOTAL_STEPS

    filler.unlink()  # space again: the rerun resumes from the kept checkpoint
    rerun = _start_training_job(tmp_path, training_caches, out, env)
    _, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr[-3000:]
    torch.set_num_threads(1)  # as the jobs: the sums of a step depend on the thread count
    reference = train([Path(p) for p in training_caches], [], tmp_path / "uninterrupted",
                      TrainSettings.from_dict(SETTINGS))
    resumed = torch.load(out / CHECKPOINT_LATEST, weights_only=False)
    expected = torch.load(reference["checkpoint_latest"], weights_only=False)
    assert resumed["global_step"] == expected["global_step"] == TOTAL_STEPS
    for name, weights in expected["model"].items():
        assert torch.equal(resumed["model"][name], weights), name


# ---------------------------------------------------------------- damaged results


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    """The workflow's results folder, exported as the workflow exports it to its jobs."""
    folder = tmp_path / "results"
    monkeypatch.setenv(integrity.ENV_RESULTS_DIR, str(folder))
    return folder


def _tiny_checkpoint() -> dict:
    return {"format": 1, "settings": {}, "model": {"w": torch.arange(4096.0)}, "epoch": 1}


def test_a_truncated_checkpoint_in_results_is_named_moved_aside_and_never_loaded(results):
    path = results / "train" / "default" / "checkpoint_final.pt"
    write_checkpoint(_tiny_checkpoint(), path)
    assert read_checkpoint(path)["epoch"] == 1
    size = path.stat().st_size
    os.truncate(path, size // 2)

    with pytest.raises(InputError) as raised:
        read_checkpoint(path)
    assert str(raised.value) == (
        f"{path}: {size // 2} bytes, {size} when it was written (truncated or overwritten); "
        "moved aside as checkpoint_final.pt.damaged: rerun the workflow to rebuild it")
    assert not path.exists() and path.with_name("checkpoint_final.pt.damaged").exists()
    assert not integrity.sidecar_of(path).exists()


def test_a_nifti_damaged_in_results_without_changing_its_size_is_caught_by_its_checksum(
        results):
    path = results / "preproc" / "sub-01" / "anat" / "sub-01_space-model_desc-norm_T1w.nii"
    save_nifti(np.linspace(0, 1, 4 * 5 * 6).reshape(4, 5, 6), np.eye(4), path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one voxel's last byte: still a readable NIfTI
    path.write_bytes(bytes(data))

    with pytest.raises(InputError, match="its checksum differs from the one recorded when it "
                                         "was written"):
        load_nifti(path)
    assert not path.exists()


def test_a_rewritten_file_gets_a_new_record_and_unrecorded_files_are_not_checked(
        results, tmp_path):
    path = results / "preproc" / "sub-01_T1w.nii.gz"
    save_nifti(np.zeros((3, 3, 3)), np.eye(4), path)
    save_nifti(np.ones((4, 4, 4)), np.eye(4), path)
    assert load_nifti(path).shape == (4, 4, 4)
    outside = tmp_path / "elsewhere" / "prediction.nii.gz"  # a user's --out: no record
    save_nifti(np.ones((3, 3, 3)), np.eye(4), outside)
    assert not integrity.sidecar_of(outside).exists()
    assert load_nifti(outside).shape == (3, 3, 3)
