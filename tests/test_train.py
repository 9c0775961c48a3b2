"""The trainer: learning, checkpoints, exact resume after SIGKILL, SIGTERM, DDP, MLflow, PSNR.

A tiny HR-FCN (width 1/16, one ResBlock per module) on synthetic 16 x 16 x 6 subjects keeps the
whole file to seconds of CPU per run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.checkpoints import SMALL_GRID, small_cached_subject

from cesynth.checkpoint import (
    CHECKPOINT_BEST,
    CHECKPOINT_FINAL,
    CHECKPOINT_LATEST,
    run_fingerprint,
    set_aside_stale_checkpoints,
)
from cesynth.evaluate import psnr_in_mask
from cesynth.inference import predict_volume
from cesynth.io import InputError
from cesynth.models import build_model
from cesynth.settings import Stage, TrainSettings
from cesynth.train import EXIT_PREEMPTED, train

SETTINGS = {
    "model": "hrfcn3d", "width_multiplier": 1 / 16, "blocks_per_module": 1,
    "stages": [[3, 1.0, 1.0, 1.0, 3e-3], [1, 0.1, 0.1, 10.0, 1e-3]],
    "patches_per_subject": 4, "checkpoint_every_steps": 2, "seed": 3, "device": "cpu",
}
TOTAL_STEPS = 4 * 4  # 4 epochs x (3 subjects x 4 patches / batch 3)
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# Runs a Trainer that slows down once its first checkpoint exists, so the test can interrupt it
# mid-training; optionally saves each rank's final weights (DDP).
RUNNER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    import torch
    from cesynth import train as T
    from cesynth.distributed import DistContext, distributed_group
    from cesynth.settings import TrainSettings

    class SlowAfterCheckpoint(T.Trainer):
        def on_step_end(self):
            super().on_step_end()
            if self.latest_path.exists():
                time.sleep(float(os.environ.get("SLOW_STEP_S", "0")))

    torch.set_num_threads(1)
    spec = json.loads(Path(sys.argv[1]).read_text())
    settings = TrainSettings.from_dict(spec["settings"])
    context = DistContext.from_env()
    with distributed_group(context, torch.device("cpu")):
        trainer = SlowAfterCheckpoint([Path(p) for p in spec["train"]],
                                      [Path(p) for p in spec["val"]], Path(spec["out"]), settings)
        trainer.fit()
        torch.save(trainer.raw_model.state_dict(), Path(spec["out"]) / f"rank{context.rank}.pt")
""")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("subjects")
    rng = np.random.default_rng(0)
    paths = [small_cached_subject(root, f"s{i}", rng) for i in range(4)]
    return {"train": paths[:3], "val": paths[3:]}


@pytest.fixture(scope="module")
def run_a(caches, tmp_path_factory) -> dict:
    """The uninterrupted reference run."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run_a")
    summary = train(caches["train"], caches["val"], out, TrainSettings.from_dict(SETTINGS))
    return {"out": out, "summary": summary, "model": _weights(out / CHECKPOINT_LATEST)}


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].double(), b[key].double(), atol=1e-6), key


def _runner(tmp_path: Path, caches: dict, out: Path, settings: dict) -> list[str]:
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"settings": settings, "out": str(out),
                                "train": [str(p) for p in caches["train"]],
                                "val": [str(p) for p in caches["val"]]}))
    return [str(script), str(spec)]


def _start_slow_run(tmp_path: Path, caches: dict, out: Path) -> subprocess.Popen:
    args = _runner(tmp_path, caches, out, SETTINGS)
    return subprocess.Popen([sys.executable, *args], env={**SUBPROCESS_ENV, "SLOW_STEP_S": "0.3"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"runner ended early:\n{process.stdout.read().decode()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no {path.name} after {timeout_s} s")
        time.sleep(0.02)


def _global_step(checkpoint: Path) -> int:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]


# ---------------------------------------------------------------- tests


def test_psnr_in_mask_matches_hand_value():
    target = np.zeros((2, 3, 3))
    pred = target.copy()
    mask = np.zeros_like(target, dtype=bool)
    mask[0, :2, :] = True                     # 6 voxels
    pred[0, 0, :] = 0.1                       # 3 of them off by 0.1: MSE = 0.03 / 6 = 0.005
    pred[1] = 0.9                             # outside the mask: ignored
    assert psnr_in_mask(pred, target, mask) == pytest.approx(10 * math.log10(1 / 0.005))
    assert psnr_in_mask(torch.tensor(target), torch.tensor(target), torch.tensor(mask)) == math.inf
    with pytest.raises(ValueError, match="empty mask"):
        psnr_in_mask(pred, target, np.zeros_like(mask))


def test_predict_volume_averages_overlapping_windows():
    class Ones(torch.nn.Module):  # every window predicts 1: the average must stay 1
        def forward(self, x):
            return torch.ones_like(x[:, :1])

    volume = torch.zeros((2, 7, 4, 4))
    prediction = predict_volume(Ones(), volume, stride=3)
    assert prediction.shape == (1, 7, 4, 4)
    assert torch.allclose(prediction, torch.ones(1, 7, 4, 4))


def test_settings_from_dict_parses_stages_and_rejects_unknown_keys():
    settings = TrainSettings.from_dict(SETTINGS)
    assert settings.stages[1] == Stage(1, 0.1, 0.1, 10.0, 1e-3)
    assert settings.total_epochs == 4 and settings.stage_of_epoch(3) == 1
    assert TrainSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(ValueError, match="unknown"):
        TrainSettings.from_dict({"learning_rate": 1})


def test_short_run_learns_and_writes_checkpoints_and_curve(run_a):
    summary, out = run_a["summary"], run_a["out"]
    assert (out / CHECKPOINT_LATEST).exists() and (out / CHECKPOINT_BEST).exists()
    assert summary["curve"].stat().st_size > 1000
    assert summary["global_step"] == TOTAL_STEPS and summary["epochs"] == 4
    epochs = json.loads(summary["metrics"].read_text())["history"]["epochs"]
    assert epochs[2]["train_loss"] < epochs[0]["train_loss"]  # same stage, same loss weights
    assert math.isfinite(summary["best_psnr"])
    best = torch.load(out / CHECKPOINT_BEST, map_location="cpu", weights_only=False)
    assert best["best_psnr"] == summary["best_psnr"]
    assert not list(out.glob(".checkpoint*"))  # no temporary files left behind


def test_resume_after_sigkill_ends_with_the_same_weights(run_a, caches, tmp_path):
    out = tmp_path / "run_b"
    process = _start_slow_run(tmp_path, caches, out)
    _wait_for(out / CHECKPOINT_LATEST, process)
    time.sleep(0.4)  # let it get past the checkpoint, so some done steps are lost
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    done = _global_step(out / CHECKPOINT_LATEST)
    assert 0 < done < TOTAL_STEPS

    summary = train(caches["train"], caches["val"], out, TrainSettings.from_dict(SETTINGS))
    assert summary["global_step"] == TOTAL_STEPS
    _assert_same_weights(run_a["model"], _weights(out / CHECKPOINT_LATEST))
    assert summary["best_psnr"] == pytest.approx(run_a["summary"]["best_psnr"], abs=1e-4)


def test_a_best_checkpoint_deleted_after_its_epoch_is_restored_on_resume(run_a, caches,
                                                                         tmp_path):
    """Snakemake deletes a killed job's declared outputs before rerunning it; a run resumed past
    its best epoch cannot write the best checkpoint again, so it comes back from its kept link."""
    out = tmp_path / "rerun"
    shutil.copytree(run_a["out"], out)
    best = (out / CHECKPOINT_BEST).read_bytes()
    (out / CHECKPOINT_BEST).unlink()
    (out / CHECKPOINT_FINAL).unlink()
    summary = train(caches["train"], caches["val"], out, TrainSettings.from_dict(SETTINGS))
    assert summary["global_step"] == TOTAL_STEPS  # nothing left to train
    assert (out / CHECKPOINT_BEST).read_bytes() == best
    assert (out / CHECKPOINT_FINAL).exists()


def test_sigterm_saves_exits_143_and_resume_continues(run_a, caches, tmp_path):
    out = tmp_path / "run_c"
    process = _start_slow_run(tmp_path, caches, out)
    _wait_for(out / CHECKPOINT_LATEST, process)
    first = _global_step(out / CHECKPOINT_LATEST)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == EXIT_PREEMPTED
    stopped_at = _global_step(out / CHECKPOINT_LATEST)
    assert first < stopped_at < TOTAL_STEPS  # saved on the signal, not only every 2 steps

    summary = train(caches["train"], caches["val"], out, TrainSettings.from_dict(SETTINGS))
    assert summary["global_step"] == TOTAL_STEPS
    _assert_same_weights(run_a["model"], _weights(out / CHECKPOINT_LATEST))


def test_worker_processes_train_to_the_same_weights(run_a, caches, tmp_path):
    settings = TrainSettings.from_dict({**SETTINGS, "workers": 2})
    train(caches["train"], caches["val"], tmp_path, settings)
    _assert_same_weights(run_a["model"], _weights(tmp_path / CHECKPOINT_LATEST))


def _step_losses(summary: dict) -> list[float]:
    history = json.loads(summary["metrics"].read_text())["history"]
    return [step["loss"] for step in history["steps"]]


def test_channels_last_trains_like_the_default_layout(run_a, caches, tmp_path):
    summary = train(caches["train"], caches["val"], tmp_path,
                    TrainSettings.from_dict({**SETTINGS, "channels_last": True}))
    # float sums in another order: differences grow over the run to a few 1e-4
    assert _step_losses(summary) == pytest.approx(_step_losses(run_a["summary"]), rel=2e-3)


def test_compiled_model_trains_like_the_eager_one(caches, tmp_path):
    """torch.compile (inductor on the CPU here) gives the eager losses; compiling takes a while."""
    one_epoch = {**SETTINGS, "stages": [[1, 1.0, 1.0, 1.0, 3e-3]]}
    eager = train(caches["train"], caches["val"], tmp_path / "eager",
                  TrainSettings.from_dict(one_epoch))
    compiled = train(caches["train"], caches["val"], tmp_path / "compiled",
                     TrainSettings.from_dict({**one_epoch, "compile": True}))
    assert _step_losses(compiled) == pytest.approx(_step_losses(eager), rel=1e-4)
    assert compiled["best_psnr"] == pytest.approx(eager["best_psnr"], abs=1e-3)
    checkpoint = torch.load(compiled["checkpoint_latest"], map_location="cpu", weights_only=False)
    assert not any(key.startswith("_orig_mod") for key in checkpoint["model"])  # loadable eagerly


def test_unet_levels_must_fit_the_model_grid(caches, tmp_path):
    too_deep = TrainSettings.from_dict({**SETTINGS, "model": "unet2d", "unet_levels": 5})
    with pytest.raises(InputError, match="16x16, not divisible by 32.*unet_levels"):
        train(caches["train"], caches["val"], tmp_path / "deep", too_deep)
    assert not (tmp_path / "deep" / CHECKPOINT_LATEST).exists()
    fits = TrainSettings.from_dict({**SETTINGS, "model": "unet2d", "unet_levels": 2,
                                    "stages": [[1, 1.0, 1.0, 1.0, 3e-3]]})
    train(caches["train"], caches["val"], tmp_path / "fits", fits)
    weights = _weights(tmp_path / "fits" / CHECKPOINT_LATEST)
    two_levels = build_model("unet2d", 3, width_multiplier=1 / 16, unet_levels=2)
    two_levels.load_state_dict(weights)  # strict: the checkpoint has exactly two levels


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_two_cpu_ranks_end_with_identical_weights(caches, tmp_path):
    out = tmp_path / "ddp"
    settings = {**SETTINGS, "stages": [[1, 1.0, 1.0, 1.0, 3e-3]], "checkpoint_every_steps": 0}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
               "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), *_runner(tmp_path, caches, out, settings)]
    result = subprocess.run(command, env=SUBPROCESS_ENV, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    _assert_same_weights(rank0, rank1)
    checkpoint = torch.load(out / CHECKPOINT_LATEST, map_location="cpu", weights_only=False)
    assert checkpoint["world_size"] == 2
    assert checkpoint["global_step"] == 2  # 12 patches / 2 ranks / batch 3
    _assert_same_weights(rank0, checkpoint["model"])


def test_mlflow_records_params_metrics_model_and_artifacts(caches, tmp_path):
    pytest.importorskip("mlflow")
    import mlflow
    import mlflow.pytorch

    from cesynth import tracking

    settings = TrainSettings.from_dict({**SETTINGS, "stages": [[1, 1.0, 1.0, 1.0, 3e-3]]})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.stage_run("train_model", {"experiment": "tiny"}, uri=uri) as active:
        summary = train(caches["train"], caches["val"], tmp_path / "out", settings)
    run = mlflow.MlflowClient(uri).get_run(active.info.run_id)
    assert run.data.params["model"] == "hrfcn3d"
    assert run.data.params["stages"].startswith("[{'epochs': 1")
    assert {"train_loss", "train_mae", "train_ssim", "train_local", "val_psnr"} <= set(
        run.data.metrics)
    assert run.data.metrics["val_psnr"] == pytest.approx(summary["best_psnr"])
    artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run.info.run_id)}
    assert {CHECKPOINT_BEST, "training_curve.png"} <= artifacts

    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    x, y, _ = SMALL_GRID
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 3, y, x)).shape == (2, 1, 3, y, x)


def test_checkpoints_record_how_the_images_were_prepared(caches, tmp_path):
    settings = TrainSettings.from_dict({**SETTINGS, "stages": [[1, 1.0, 1.0, 1.0, 3e-3]]})
    preprocessing = {"model_grid": [16, 16, 6], "normalise": "histeq", "brainmask": "deepbet"}
    summary = train(caches["train"], caches["val"], tmp_path, settings,
                    preprocessing=preprocessing)
    for path in (summary["checkpoint_best"], summary["checkpoint_latest"]):
        assert torch.load(path, weights_only=False)["preprocessing"] == preprocessing


def test_t1_to_t2_model_trains_on_the_same_caches(caches, tmp_path):
    settings = TrainSettings.from_dict({**SETTINGS, "stages": [[1, 1.0, 1.0, 1.0, 3e-3]],
                                        "modalities": ["T1w"], "target": "T2w"})
    summary = train(caches["train"], caches["val"], tmp_path, settings)
    assert summary["global_step"] == 4 and math.isfinite(summary["best_psnr"])
    one_input = build_model("hrfcn3d", 1, width_multiplier=1 / 16, blocks_per_module=1)
    one_input.load_state_dict(_weights(tmp_path / CHECKPOINT_LATEST))  # strict: 1 input channel


def test_only_a_restart_of_the_same_run_keeps_its_checkpoints(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    assert not set_aside_stale_checkpoints(out, "aaaa")  # nothing there yet
    (out / CHECKPOINT_LATEST).write_bytes(b"latest")
    (out / CHECKPOINT_BEST).write_bytes(b"best")
    assert not set_aside_stale_checkpoints(out, "aaaa")  # same run restarted: resume
    assert (out / CHECKPOINT_LATEST).read_bytes() == b"latest"
    assert set_aside_stale_checkpoints(out, "bbbb")  # other settings or subjects
    assert not (out / CHECKPOINT_LATEST).exists()
    assert (out / "checkpoint_latest.superseded.pt").read_bytes() == b"latest"
    assert (out / "checkpoint_best.superseded.pt").read_bytes() == b"best"


def test_fingerprint_follows_settings_and_caches(tmp_path):
    cache = tmp_path / "sub-01_cache.json"
    cache.write_text("{}")
    base = TrainSettings()
    first = run_fingerprint(base, [cache], [])
    assert first == run_fingerprint(TrainSettings(), [cache], [])
    assert first != run_fingerprint(TrainSettings(seed=1), [cache], [])
    other = tmp_path / "sub-02_cache.json"
    other.write_text("{}")
    assert first != run_fingerprint(base, [cache, other], [])
    assert first == run_fingerprint(TrainSettings(workers=4, device="cuda", compile=True,
                                                  checkpoint_every_steps=9), [cache], [])


def test_channels_last_trains_a_2d_model(caches, tmp_path):
    """channels_last_3d on a 2D model's 4-D weights raised before; channels_last is used now."""
    settings = {**SETTINGS, "model": "hrfcn2d", "stages": [[1, 1.0, 1.0, 1.0, 3e-3]]}
    default = train(caches["train"], [], tmp_path / "a", TrainSettings.from_dict(settings))
    last = train(caches["train"], [], tmp_path / "b",
                 TrainSettings.from_dict({**settings, "channels_last": True}))
    assert _step_losses(last) == pytest.approx(_step_losses(default), rel=2e-3)


def test_last_stage_from_a_shared_trunk_equals_one_whole_run(run_a, caches, tmp_path):
    settings = TrainSettings.from_dict(SETTINGS)
    trunk = train(caches["train"], caches["val"], tmp_path / "trunk",
                  TrainSettings.from_dict({**SETTINGS, "stages": SETTINGS["stages"][:1]}))
    resumed = train(caches["train"], caches["val"], tmp_path / "last", settings,
                    start_from=trunk["checkpoint_final"])
    final_a = _weights(run_a["summary"]["checkpoint_final"])
    for name, tensor in _weights(resumed["checkpoint_final"]).items():
        assert torch.equal(tensor, final_a[name]), name
    assert _step_losses(resumed) == _step_losses(run_a["summary"])


def test_a_trunk_of_other_settings_is_refused(caches, tmp_path):
    trunk = train(caches["train"], [], tmp_path / "trunk",
                  TrainSettings.from_dict({**SETTINGS, "stages": [[1, 1.0, 1.0, 1.0, 3e-3]]}))
    with pytest.raises(InputError, match="other settings"):
        train(caches["train"], [], tmp_path / "last", TrainSettings.from_dict(SETTINGS),
              start_from=trunk["checkpoint_final"])


def test_best_checkpoint_is_chosen_within_the_last_stage(run_a):
    summary = run_a["summary"]
    last_stage_start = SETTINGS["stages"][0][0]
    assert summary["best_epoch"] >= last_stage_start
    epochs = json.loads(summary["metrics"].read_text())["history"]["epochs"]
    in_last = [e["psnr"] for e in epochs if e["epoch"] >= last_stage_start]
    assert summary["best_psnr"] == max(in_last)
    final = torch.load(summary["checkpoint_final"], map_location="cpu", weights_only=False)
    assert final["epoch"] == 4 and final["global_step"] == TOTAL_STEPS


def test_validation_scores_as_evaluation_does(run_a, caches):
    """Validation's brain PSNR equals evaluate_volumes on inference's clipped, masked output."""
    from cesynth.data import ValidationVolumes
    from cesynth.evaluate import evaluate_volumes
    from cesynth.inference import finish_prediction
    from cesynth.normalise import from_slice_major

    epochs = json.loads(run_a["summary"]["metrics"].read_text())["history"]["epochs"]
    model = build_model("hrfcn3d", 3, width_multiplier=1 / 16, blocks_per_module=1)
    model.load_state_dict(_weights(run_a["summary"]["checkpoint_final"]))
    subject = ValidationVolumes(caches["val"])[0]
    prediction = predict_volume(model.eval(), torch.from_numpy(subject.inputs))[0].numpy()
    brain = from_slice_major(subject.mask[0] != 0)
    scores = evaluate_volumes(finish_prediction(from_slice_major(prediction), brain),
                              from_slice_major(subject.target[0]), brain)["brain"]
    assert epochs[-1]["psnr"] == pytest.approx(scores["psnr"], abs=1e-4)
    assert epochs[-1]["ssim"] == pytest.approx(scores["ssim"], abs=1e-5)
    assert epochs[-1]["mae"] == pytest.approx(scores["mae"], abs=1e-6)


def test_a_run_without_training_subjects_says_why():
    from cesynth.io import InputError
    from cesynth.train import check_training_subjects

    with pytest.raises(InputError, match="no Set A training scans: every scan is in Set B"):
        check_training_subjects([])
    check_training_subjects(["results/train/cache/sub-01"])


def test_training_subjects_trains_on_the_first_subjects_only(caches, tmp_path):
    torch.set_num_threads(1)
    settings = {**SETTINGS, "stages": [[1, 1.0, 1.0, 1.0, 3e-3]], "checkpoint_every_steps": 0}
    first_two = train(caches["train"][:2], caches["val"], tmp_path / "two",
                      TrainSettings.from_dict(settings))
    limited = train(caches["train"][::-1], caches["val"], tmp_path / "limited",
                    TrainSettings.from_dict({**settings, "training_subjects": 2}))
    assert first_two["global_step"] == limited["global_step"] == 3  # 8 patches in batches of 3
    _assert_same_weights(_weights(tmp_path / "two" / CHECKPOINT_FINAL),
                         _weights(tmp_path / "limited" / CHECKPOINT_FINAL))
    with pytest.raises(InputError, match="training_subjects is 4 but the training split has 3"):
        train(caches["train"], caches["val"], tmp_path / "four",
              TrainSettings.from_dict({**settings, "training_subjects": 4}))
    last_two = train(caches["train"][1:], caches["val"], tmp_path / "last_two",
                     TrainSettings.from_dict(settings))
    order = [Path(path).name.removesuffix("_cache.json") for path in caches["train"][::-1]]
    ordered = train(caches["train"], caches["val"], tmp_path / "ordered",
                    TrainSettings.from_dict({**settings, "training_subjects": 2,
                                             "training_order": order}))
    assert last_two["global_step"] == ordered["global_step"]
    _assert_same_weights(_weights(tmp_path / "last_two" / CHECKPOINT_FINAL),
                         _weights(tmp_path / "ordered" / CHECKPOINT_FINAL))


def test_training_order_sets_which_subjects_a_learning_curve_takes_first():
    from cesynth.train import first_training_subjects

    caches = [Path(f"results/train/cache/sub-{label}") for label in ("A1", "B2", "C3", "D4")]
    assert first_training_subjects(caches, 2) == caches[:2]  # name order by default
    ordered = first_training_subjects(caches, 3, TrainSettings.from_dict(
        {"training_order": ["sub-D4", "B_2"]}).training_order)
    assert [path.name for path in ordered] == ["sub-A1", "sub-B2", "sub-D4"]
    sessions = [Path("c/sub-A1_ses-1"), Path("c/sub-B2_ses-1")]
    assert first_training_subjects(sessions, 1, ("B2",)) == [sessions[1]]
    as_the_rule_gives_them = [path / f"{path.name}_cache.json" for path in caches]
    assert first_training_subjects(as_the_rule_gives_them, 1, ("C3",)) == [
        as_the_rule_gives_them[2]]
    with pytest.raises(InputError, match="training_order names Z9, not a training subject"):
        first_training_subjects(caches, 2, ("Z9",))
