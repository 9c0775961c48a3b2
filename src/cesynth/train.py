"""Training of the synthesis models: a resumable, seeded trainer organised by lifecycle hooks.

The loop is nnU-Net's: :meth:`Trainer.fit` calls ``on_train_start``, then per epoch
``train_step`` for each batch and ``on_epoch_end`` (validation, best model, checkpoint, stage
switch), then ``on_train_end``. The run's settings are :class:`cesynth.settings.TrainSettings`;
checkpoint reading, resume checks and run fingerprints are in :mod:`cesynth.checkpoint`, process
groups and devices in :mod:`cesynth.distributed`, the MLflow tracker in :mod:`cesynth.tracking`.
Choices made here:

* **Stages** (:class:`cesynth.settings.Stage`) are consecutive epoch ranges. At a boundary the
  loss weights are replaced and the learning rate of the *same* Adam optimizer is set to the new
  value; Adam's moment estimates are kept, as in a step learning-rate schedule (Adam normalises
  by the second moment, so the new weights' gradient scale is absorbed within a few hundred
  steps).
* **Data order** is a pure function of ``(seed, epoch, batch index)`` (:mod:`cesynth.data`); the
  epoch index runs on across stages, so stage 2 sees fresh patches. A resumed epoch builds its
  sampler from the first batch not yet done, so nothing is loaded twice.
* **Randomness inside a step** (dropout, if a model has any) comes from ``torch.manual_seed``
  re-seeded from ``(seed, global step, rank)`` before every step, so it does not depend on what
  ran before; the RNG states are saved as well.
* **Validation** predicts each validation subject's foreground slices window by window with
  :func:`cesynth.inference.predict_volume` (3 slices, stride
  :attr:`TrainSettings.validation_stride`, default 1, overlapping predictions averaged, the last
  window aligned to the last slice) and scores them exactly as evaluation scores a test subject
  (clipped to [0, 1], zero outside the brain, :func:`cesynth.evaluate.evaluate_volumes`): brain
  PSNR, MAE and SSIM averaged over subjects. ``checkpoint_best.pt`` follows the best PSNR
  *within the last stage* (earlier stages optimise other loss weights, and brain PSNR favours
  them); ``checkpoint_final.pt`` is the model at the end. Validation subjects only select:
  they are never the reported test subjects.
* **Shared trunks**: a run can start its last stage from another run's final checkpoint of
  every earlier stage (:meth:`Trainer.load_trunk`); data order, optimizer and RNG states carry
  on, so the result is the same as training all stages in one run.
* **Augmentation** jitters input intensities, but the local loss's enhancement mask
  ``Y - X_T1 > delta`` is built from the un-jittered T1 (the batch's ``t1``).
* **Checkpoints** (``checkpoint_latest.pt``, contents in :mod:`cesynth.checkpoint`) are written
  atomically every ``checkpoint_every_steps`` steps, at every epoch end (hence every stage
  boundary) and on SIGTERM. A run restarted with the same arguments resumes from it, exactly on
  CPU.
* **SIGTERM** (SLURM pre-emption, Snakemake cancelling a job): the current step is finished, a
  checkpoint saved, and the process exits with :data:`EXIT_PREEMPTED` = 143 (128 + SIGTERM, what
  a process killed by SIGTERM reports), raised as :class:`TrainingPreempted` (a ``SystemExit``).
  The job therefore fails and its MLflow run ends KILLED; SLURM's requeue or Snakemake's
  ``--retries`` reruns the job, which continues from the checkpoint.
* **Multi-GPU**: under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in
  DistributedDataParallel (NCCL on CUDA, gloo on CPU), each rank draws its shard of every
  epoch's patches, and only rank 0 writes checkpoints, plots and MLflow records. BatchNorm
  buffers are broadcast from rank 0 before validation and at the end, so all ranks hold the
  same weights.
* **Target** is a setting: ``ceT1w`` (the cache's target array) or one of the cached input
  modalities (``T2w``/``adc`` for the T1->T2 and T1->ADC models), which is then taken from the
  cache's input channels; the model inputs are the cache channels named by ``modalities``.

The module is longer than the project's usual 500 lines because the :class:`Trainer` is one
concern: its hooks share the run's state (model, optimizer, sampler position, history,
checkpoints), and splitting them across modules would spread that state without making any
part usable alone. What is not the loop lives elsewhere (settings, checkpoints, devices,
tracking, loaders); what stays beside the :class:`Trainer` is what only it uses: the cache
channel selection, the curve plot and its entry points (:func:`train`, :func:`train_from_files`,
``python -m cesynth.train``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from cesynth.cache import CACHE_SUFFIX, PATCH_SLICES, TARGET_MODALITY
from cesynth.checkpoint import (
    CHECKPOINT_BEST,
    CHECKPOINT_FINAL,
    CHECKPOINT_FORMAT,
    CHECKPOINT_LATEST,
    check_resumable,
    check_trunk,
    keep_best,
    read_checkpoint,
    restore_best,
    restore_rng_states,
    rng_states,
    run_fingerprint,
    set_aside_stale_checkpoints,
    write_checkpoint,
)
from cesynth.data import (
    Augmentation,
    EpochSampler,
    PatchDataset,
    ValidationVolumes,
    batch_loader,
)
from cesynth.distributed import DistContext, distributed_group, resolve_device
from cesynth.evaluate import evaluate_volumes
from cesynth.inference import finish_prediction, predict_volume
from cesynth.io import InputError, atomic_path, read_json, write_json
from cesynth.losses import LossWeights, SynthesisLoss
from cesynth.models import channels_last_format, model_from_settings
from cesynth.normalise import from_slice_major
from cesynth.settings import TrainSettings
from cesynth.signals import EXIT_TERMINATED
from cesynth.tracking import TrainingTracker, default_tracker

CURVE_PNG = "training_curve.png"
METRICS_JSON = "train_metrics.json"
EXIT_PREEMPTED = EXIT_TERMINATED
"""Exit code after a SIGTERM: 128 + 15, as for a process the signal killed."""


# ---------------------------------------------------------------- data adapters


@dataclass(frozen=True)
class ChannelSelection:
    """Which cache channels feed the model and which array is the target.

    Args:
        inputs: cache input-channel indices, in model order.
        target: cache input-channel index of the target, or None for the cached CE-T1 target.
    """

    inputs: tuple[int, ...]
    target: int | None

    @classmethod
    def for_caches(cls, cache_paths: Sequence[Path], settings: TrainSettings
                   ) -> ChannelSelection:
        """Map the settings' modality names to the channels of the caches (all alike)."""
        orders = {tuple(read_json(p)["modalities"]) for p in cache_paths}
        if len(orders) != 1:
            raise InputError(cache_paths[0], f"caches differ in modality order: {sorted(orders)}")
        cached = orders.pop()
        wanted = settings.modalities + (() if settings.target == TARGET_MODALITY
                                        else (settings.target,))
        missing = [m for m in wanted if m not in cached]
        if missing:
            raise InputError(cache_paths[0], f"cache lacks modalities {missing}")
        target = None if settings.target == TARGET_MODALITY else cached.index(settings.target)
        return cls(tuple(cached.index(m) for m in settings.modalities), target)

    def split(self, inputs: torch.Tensor, target: torch.Tensor, channel_axis: int = 1
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs and target from a cache's ``inputs`` and ``target`` arrays."""
        chosen = inputs.index_select(channel_axis, torch.tensor(self.inputs))
        if self.target is not None:
            target = inputs.narrow(channel_axis, self.target, 1)
        return chosen, target


def usable_caches(cache_paths: Sequence[Path], target: str) -> list[Path]:
    """The caches whose target exists: a subject lacking the target modality is left out."""
    if target == TARGET_MODALITY:
        return list(cache_paths)
    return [p for p in cache_paths if target not in read_json(p).get("missing", [])]


# ---------------------------------------------------------------- the trainer


class TrainingPreempted(SystemExit):
    """Raised after SIGTERM once the checkpoint is saved; exits with :data:`EXIT_PREEMPTED`."""

    def __init__(self) -> None:
        super().__init__(EXIT_PREEMPTED)


@dataclass
class TrainState:
    """The loop's position and record (saved in every checkpoint).

    Args:
        epoch: current epoch, counted over all stages (== total epochs when done).
        step_in_epoch: batches of the current epoch already done.
        global_step: optimizer steps so far.
        best_psnr: best mean validation brain PSNR so far.
        best_epoch: the epoch that reached it (-1: none yet).
        history: ``steps`` (per-step losses) and ``epochs`` (validation metrics) records.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_psnr: float = -math.inf
    best_epoch: int = -1
    history: dict[str, list[dict[str, float]]] = field(
        default_factory=lambda: {"steps": [], "epochs": []})


class Trainer:
    """Trains one synthesis model; a rerun with the same ``out_dir`` resumes from its checkpoint.

    Args:
        train_caches: cache JSONs of the training subjects.
        val_caches: cache JSONs of the validation subjects (may be empty: the best checkpoint
            is then the last epoch's).
        out_dir: folder for checkpoints, the curve and the metrics JSON.
        settings: the run's settings.
        tracker: where to log; default :func:`default_tracker` (MLflow when a run is active).
        context: distributed position; default from the environment.
        preprocessing: how the training images were made (``model_grid``, ``normalise``,
            ``brainmask``), stored in every checkpoint so that prediction on a new patient
            prepares its images the same way.
    """

    def __init__(self, train_caches: Sequence[Path], val_caches: Sequence[Path], out_dir: Path,
                 settings: TrainSettings, *, tracker: TrainingTracker | None = None,
                 context: DistContext | None = None,
                 preprocessing: Mapping[str, Any] | None = None,
                 start_from: Path | None = None):
        self.settings = settings
        self.start_from = Path(start_from) if start_from else None
        self.preprocessing = dict(preprocessing or {})
        self.out_dir = Path(out_dir)
        self.context = context or DistContext.from_env()
        self.tracker = tracker if tracker is not None else default_tracker()
        self.device = resolve_device(settings.device, self.context)
        self.train_caches = first_training_subjects(
            usable_caches([Path(p) for p in train_caches], settings.target),
            settings.training_subjects, settings.training_order)
        self.val_caches = usable_caches([Path(p) for p in val_caches], settings.target)
        self.channels = ChannelSelection.for_caches(self.train_caches + self.val_caches, settings)
        self.state = TrainState()
        self._stop_requested = False
        self._progress: tqdm | None = None

    # -- paths

    @property
    def latest_path(self) -> Path:
        """``checkpoint_latest.pt`` in the output folder."""
        return self.out_dir / CHECKPOINT_LATEST

    @property
    def best_path(self) -> Path:
        """``checkpoint_best.pt``: the best validation brain PSNR within the last stage."""
        return self.out_dir / CHECKPOINT_BEST

    @property
    def final_path(self) -> Path:
        """``checkpoint_final.pt``: the model at the end of the last stage."""
        return self.out_dir / CHECKPOINT_FINAL

    # -- the loop

    def fit(self) -> dict[str, Any]:
        """Train to the end of the last stage (or until SIGTERM), resuming if possible.

        Returns:
            Final metrics and output paths (see :meth:`on_train_end`).

        Raises:
            TrainingPreempted: after SIGTERM, once the checkpoint is written.
        """
        with self._sigterm_requests_stop():
            self.on_train_start()
            while self.state.epoch < self.settings.total_epochs:
                for batch in self.epoch_batches():
                    self.train_step(batch)
                    self.on_step_end()
                self.on_epoch_end()
            return self.on_train_end()

    # -- hooks

    def on_train_start(self) -> None:
        """Seed, build model, optimizer and data, then resume from the latest checkpoint."""
        self._configure_determinism()
        torch.manual_seed(self.settings.seed)
        self.raw_model = self._build_model()
        self.optimizer = torch.optim.Adam(self.raw_model.parameters(),
                                          lr=self.settings.stages[0].lr)
        self.model = self._wrap_model(self.raw_model)
        self.dataset = PatchDataset(
            self.train_caches, patches_per_subject=self.settings.patches_per_subject,
            seed=self.settings.seed, augmentation=Augmentation() if self.settings.augment else None,
            enhancing_share=self.settings.enhancing_patch_share, delta=self.settings.delta)
        _check_grid_fits(self.raw_model, self.dataset, self.settings)
        if self.latest_path.exists():
            self.load_checkpoint(self.latest_path)
            if self.context.is_main:
                restore_best(self.best_path)
        elif self.start_from is not None:
            self.load_trunk(self.start_from)
        self._apply_stage()
        if self.tracker and self.context.is_main:
            self.tracker.log_params(self.settings.to_dict())

    def epoch_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """The not yet done batches of the current epoch, with a progress bar on rank 0."""
        settings, context = self.settings, self.context
        sampler = EpochSampler(len(self.dataset), seed=settings.seed, epoch=self.state.epoch,
                               rank=context.rank, world_size=context.world_size)
        indices = sampler.indices()[self.state.step_in_epoch * settings.batch_size:]
        self.dataset.set_epoch(self.state.epoch)
        loader = batch_loader(self.dataset, indices, settings.batch_size, settings.workers,
                              worker_seed=settings.seed * 100_003 + self.state.epoch)
        total = math.ceil(len(sampler) / settings.batch_size)
        stage = settings.stage_of_epoch(self.state.epoch)
        self._progress = tqdm(
            total=total, initial=self.state.step_in_epoch, file=sys.stderr, leave=False,
            disable=not context.is_main, dynamic_ncols=True,
            desc=f"stage {stage + 1} epoch {self.state.epoch + 1}/{settings.total_epochs}")
        with self._progress:
            yield from loader

    def train_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """One optimizer step on one batch.

        Args:
            batch: a :class:`cesynth.data.PatchDataset` batch.

        Returns:
            The total loss and its unweighted terms.
        """
        started = time.perf_counter()
        torch.manual_seed(_step_seed(self.settings.seed, self.state.global_step,
                                     self.context.rank))
        inputs, target = self._to_device(batch)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            prediction = self.model(inputs)
        # The local loss's mask comes from the T1 before intensity augmentation (as cached).
        reference_t1 = batch["t1"].to(self.device, non_blocking=True)
        total, terms = self.loss_fn(prediction.float(), target, reference_t1)
        total.backward()
        self.optimizer.step()
        values = {"loss": float(total.detach()), **terms}
        self._record_step(values, len(inputs), time.perf_counter() - started)
        return values

    def on_step_end(self) -> None:
        """Checkpoint every ``checkpoint_every_steps``; after SIGTERM, save and exit."""
        every = self.settings.checkpoint_every_steps
        if every and self.state.global_step % every == 0:
            self.save_checkpoint(self.latest_path)
        if self._agreed_stop():
            self.save_checkpoint(self.latest_path)
            self._barrier()
            raise TrainingPreempted()

    @torch.no_grad()
    def validation_step(self, subject: Any) -> dict[str, float]:
        """Predict one validation subject's foreground slices and score them.

        Args:
            subject: a :class:`cesynth.data.SubjectVolumes`.

        Returns:
            The subject's brain ``psnr`` (dB), ``mae`` and ``ssim``, computed as evaluation
            computes them: the prediction clipped to [0, 1] and zero outside the brain
            (:func:`cesynth.inference.finish_prediction`), scored by
            :func:`cesynth.evaluate.evaluate_volumes`.
        """
        inputs, target = self.channels.split(torch.from_numpy(subject.inputs),
                                             torch.from_numpy(subject.target), channel_axis=0)
        self.raw_model.eval()
        with self._autocast():
            prediction = predict_volume(self.raw_model, inputs.to(self.device),
                                        stride=self.settings.validation_stride,
                                        batch_size=self.settings.batch_size).cpu()
        brain = from_slice_major(subject.mask[0] != 0)
        finished = finish_prediction(from_slice_major(prediction[0].numpy()), brain)
        scores = evaluate_volumes(finished, from_slice_major(target[0].numpy()), brain)["brain"]
        psnr = math.inf if scores["psnr"] is None else scores["psnr"]
        return {"psnr": psnr, "mae": scores["mae"], "ssim": scores["ssim"]}

    def on_epoch_end(self) -> None:
        """Validate, keep the best model, advance the epoch (and stage), save the checkpoint."""
        self._sync_buffers()
        metrics = self._validate()
        state = self.state
        record = {"epoch": state.epoch, "step": state.global_step, **metrics,
                  "train_loss": self._epoch_mean_loss(state.epoch)}
        state.history["epochs"].append(record)
        if self.tracker and self.context.is_main and metrics:
            self.tracker.log_epoch(state.global_step, metrics)
        # "Best" is chosen within the last stage only (earlier stages train with other loss
        # weights); without validation subjects it is simply the latest epoch.
        in_last_stage = self.settings.stage_of_epoch(state.epoch) == len(self.settings.stages) - 1
        improved = in_last_stage and (not metrics or metrics["psnr"] > state.best_psnr)
        if improved:
            state.best_psnr, state.best_epoch = metrics.get("psnr", -math.inf), state.epoch
        state.epoch += 1
        state.step_in_epoch = 0
        self._apply_stage()
        self.save_checkpoint(self.latest_path)
        if improved:
            self.save_checkpoint(self.best_path)
            if self.context.is_main:
                keep_best(self.best_path)

    def on_train_end(self) -> dict[str, Any]:
        """Plot the curves, write the metrics JSON, log the best model; return the summary.

        Returns:
            ``best_psnr``, ``best_epoch``, ``final_psnr``, ``final_loss``, ``global_step``,
            ``epochs`` and the paths ``checkpoint_best``, ``checkpoint_latest``, ``curve``,
            ``metrics``.
        """
        self._sync_buffers()
        state = self.state
        epochs = state.history["epochs"]
        summary: dict[str, Any] = {
            "best_psnr": state.best_psnr, "best_epoch": state.best_epoch,
            "final_psnr": epochs[-1].get("psnr", math.nan) if epochs else math.nan,
            "final_loss": state.history["steps"][-1]["loss"] if state.history["steps"]
            else math.nan,
            "global_step": state.global_step, "epochs": state.epoch,
            "checkpoint_best": self.best_path, "checkpoint_latest": self.latest_path,
            "checkpoint_final": self.final_path,
            "curve": self.out_dir / CURVE_PNG, "metrics": self.out_dir / METRICS_JSON,
        }
        self.save_checkpoint(self.final_path)
        if self.context.is_main:
            plot_training_curve(state.history, summary["curve"])
            write_json({k: v for k, v in summary.items() if not isinstance(v, Path)} |
                       {"history": state.history}, summary["metrics"])
            if self.tracker:
                self.tracker.log_final(self.final_model(), self.input_example(),
                                       [self.final_path, self.best_path, summary["curve"],
                                        summary["metrics"]])
        self._barrier()
        return summary

    # -- checkpoints

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to resume exactly (see the module docstring)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "settings": self.settings.to_dict(),
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "stage": self.settings.stage_of_epoch(self.state.epoch),
            "epoch": self.state.epoch,
            "step_in_epoch": self.state.step_in_epoch,
            "global_step": self.state.global_step,
            "best_psnr": self.state.best_psnr,
            "best_epoch": self.state.best_epoch,
            "history": self.state.history,
            "rng": rng_states(),
            "world_size": self.context.world_size,
            "preprocessing": self.preprocessing,
        }

    def save_checkpoint(self, path: Path) -> None:
        """Write the checkpoint atomically (rank 0 only)."""
        if not self.context.is_main:
            return
        write_checkpoint(self.checkpoint_state(), path)

    def load_checkpoint(self, path: Path) -> None:
        """Restore model, optimizer, loop position, record and RNG states from ``path``.

        Raises:
            InputError: the checkpoint is unreadable or was written with other settings.
        """
        checkpoint = read_checkpoint(path)
        check_resumable(checkpoint, self.settings, self.context, path)
        self.raw_model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.state = TrainState(checkpoint["epoch"], checkpoint["step_in_epoch"],
                                checkpoint["global_step"], checkpoint["best_psnr"],
                                checkpoint["best_epoch"], checkpoint["history"])
        restore_rng_states(checkpoint["rng"])

    def load_trunk(self, path: Path) -> None:
        """Start the last stage from a run that trained every earlier stage (a shared trunk).

        The model, optimizer, loop position, record and RNG states continue from the trunk's
        final checkpoint, so the result equals training all stages in one run; the best
        checkpoint is then chosen within this last stage.

        Raises:
            InputError: the trunk is unreadable, unfinished or trained with other settings.
        """
        checkpoint = read_checkpoint(path)
        check_trunk(checkpoint, self.settings, self.context, path)
        self.raw_model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.state = TrainState(checkpoint["epoch"], 0, checkpoint["global_step"],
                                history=checkpoint["history"])
        restore_rng_states(checkpoint["rng"])

    def final_model(self) -> nn.Module:
        """A CPU copy of the model as trained (the final weights), in eval mode."""
        model = self._build_model(on_device=False)
        model.load_state_dict({k: v.cpu() for k, v in self.raw_model.state_dict().items()})
        return model.float().eval()

    def input_example(self) -> np.ndarray:
        """One zero patch ``(1, C, 3, Y, X)`` of the training grid, for the model signature."""
        subject = self.dataset.subjects[0]
        _, _, rows, cols = np.load(subject.arrays["inputs"], mmap_mode="r").shape
        shape = (1, len(self.settings.modalities), PATCH_SLICES, rows, cols)
        return np.zeros(shape, dtype=np.float32)

    # -- helpers

    def _configure_determinism(self) -> None:
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        else:  # speed over bitwise reproducibility on GPUs
            torch.backends.cudnn.benchmark = True

    def _build_model(self, on_device: bool = True) -> nn.Module:
        settings = self.settings
        model = model_from_settings(settings)
        if not on_device:
            return model
        model = model.to(self.device)
        if settings.channels_last:  # a 2D model's weights are 4-D: channels_last, not _3d
            model = model.to(memory_format=channels_last_format(model))
        return model

    def _wrap_model(self, model: nn.Module) -> nn.Module:
        wrapped = model
        if self.context.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        if self.settings.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    def _apply_stage(self) -> None:
        """Loss weights and learning rate of the current epoch's stage."""
        stage = self.settings.stages[self.settings.stage_of_epoch(self.state.epoch)]
        self.loss_fn = SynthesisLoss(LossWeights(stage.l1, stage.l2, stage.l3,
                                                 self.settings.delta))
        for group in self.optimizer.param_groups:
            group["lr"] = stage.lr

    def _to_device(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, target = self.channels.split(batch["inputs"], batch["target"])
        inputs = inputs.to(self.device, non_blocking=True)
        target = target.to(self.device, non_blocking=True)
        if self.settings.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
        return inputs, target

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.settings.bf16 and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _record_step(self, values: dict[str, float], n_patches: int, seconds: float) -> None:
        state = self.state
        state.global_step += 1
        state.step_in_epoch += 1
        state.history["steps"].append({"step": state.global_step, "epoch": state.epoch, **values})
        if self.tracker and self.context.is_main:
            self.tracker.log_step(state.global_step, values)
        if self._progress is not None:
            rate = n_patches * self.context.world_size / max(seconds, 1e-9)
            self._progress.set_postfix(loss=f"{values['loss']:.4f}", patches_s=f"{rate:.1f}")
            self._progress.update(1)

    def _epoch_mean_loss(self, epoch: int) -> float:
        losses = [s["loss"] for s in self.state.history["steps"] if s["epoch"] == epoch]
        return float(np.mean(losses)) if losses else math.nan

    def _validate(self) -> dict[str, float]:
        """Mean subject metrics; with several ranks each scores its share, then all-reduce."""
        volumes = ValidationVolumes(self.val_caches)
        mine = range(self.context.rank, len(volumes), self.context.world_size)
        scores = [self.validation_step(volumes[i]) for i in mine]
        names = ("psnr", "mae", "ssim")
        sums = torch.tensor([*(sum(s[n] for s in scores) for n in names), len(scores)],
                            dtype=torch.float64)
        if self.context.enabled:
            dist.all_reduce(sums)
        *totals, count = sums.tolist()
        if count == 0:
            return {}
        return {name: total / count for name, total in zip(names, totals, strict=True)}

    def _sync_buffers(self) -> None:
        """BatchNorm statistics differ per rank after local forwards: take rank 0's."""
        if not self.context.enabled:
            return
        for buffer in self.raw_model.buffers():
            dist.broadcast(buffer.data, src=0)

    def _agreed_stop(self) -> bool:
        """Whether any rank got SIGTERM (all ranks must stop after the same step)."""
        if not self.context.enabled:
            return self._stop_requested
        flag = torch.tensor([float(self._stop_requested)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _barrier(self) -> None:
        if self.context.enabled:
            dist.barrier()

    @contextlib.contextmanager
    def _sigterm_requests_stop(self) -> Iterator[None]:
        """Turn SIGTERM into a stop request honoured after the current step."""
        def request_stop(signum: int, frame: Any) -> None:
            self._stop_requested = True

        try:
            previous = signal.signal(signal.SIGTERM, request_stop)
        except ValueError:  # not the main thread: signals cannot be caught here
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)


def _check_grid_fits(model: nn.Module, dataset: PatchDataset, settings: TrainSettings) -> None:
    """Fail before training when the model cannot take the cached grid's in-plane size."""
    rows, cols = dataset.patch_shapes["inputs"][0][-2:]
    multiple = getattr(model, "inplane_multiple", 1)
    if rows % multiple or cols % multiple:
        hint = " or lower train.unet_levels" if settings.model.startswith("unet") else ""
        raise InputError(settings.model, f"the model grid's slices are {rows}x{cols}, not "
                         f"divisible by {multiple}; choose another model_grid{hint}")


def _step_seed(seed: int, global_step: int, rank: int) -> int:
    return int(np.random.default_rng([seed, global_step, rank]).integers(2**62))


# ---------------------------------------------------------------- plot and entry points


def plot_training_curve(history: Mapping[str, Sequence[Mapping[str, float]]],
                        path: Path) -> Path:
    """Plot per-step training losses and per-epoch validation PSNR to a PNG (atomically).

    Args:
        history: :attr:`TrainState.history`.
        path: output PNG.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, psnr_axes = figure.subplots(1, 2)
    steps = [s["step"] for s in history["steps"]]
    for key in ("loss", "mae", "ssim", "local"):
        loss_axes.plot(steps, [s[key] for s in history["steps"]], label=key, linewidth=0.8)
    loss_axes.set(xlabel="step", ylabel="training loss", yscale="log", title="training")
    loss_axes.legend()
    epochs = [e for e in history["epochs"] if "psnr" in e]
    psnr_axes.plot([e["epoch"] + 1 for e in epochs], [e["psnr"] for e in epochs], marker="o")
    psnr_axes.set(xlabel="epoch", ylabel="brain PSNR (dB)", title="validation")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return path


def train(train_caches: list[Path], val_caches: list[Path], out_dir: Path,
          settings: TrainSettings, *, tracker: TrainingTracker | None = None,
          preprocessing: Mapping[str, Any] | None = None,
          start_from: Path | None = None) -> dict[str, Any]:
    """Train (or resume training) a synthesis model; torchrun-aware.

    Args:
        train_caches: cache JSONs (:func:`cesynth.cache.cache_subject`) of training subjects.
        val_caches: cache JSONs of validation subjects.
        out_dir: output folder (checkpoints, curve, metrics JSON); rerunning with the same
            folder resumes from ``checkpoint_latest.pt``.
        settings: the run's settings.
        tracker: where to log; default MLflow when a run is active, else nothing.
        preprocessing: stored in the checkpoints (see :class:`Trainer`).
        start_from: the final checkpoint of a run of every stage but the last (a trunk), to
            train only the last stage (see :meth:`Trainer.load_trunk`).

    Returns:
        Final metrics and paths, see :meth:`Trainer.on_train_end`.

    Raises:
        TrainingPreempted: on SIGTERM, after saving (exit code :data:`EXIT_PREEMPTED`).
        InputError: bad caches or an incompatible checkpoint.
    """
    context = DistContext.from_env()
    device = resolve_device(settings.device, context)
    with distributed_group(context, device):
        trainer = Trainer(train_caches, val_caches, out_dir, settings, tracker=tracker,
                          context=context, preprocessing=preprocessing, start_from=start_from)
        return trainer.fit()


def first_training_subjects(caches: Sequence[Path], count: int,
                            order: Sequence[str] = ()) -> list[Path]:
    """The first ``count`` training caches (all of them when ``count`` is 0).

    The order is ``order`` (participant labels, as ``train.training_order`` lists them), then
    the unlisted subjects in name order. Subsets for a learning curve are so nested: the first 3
    subjects hold the first 2. The chosen subjects are returned in name order, so a subset
    trains as the same subjects given alone would.

    Raises:
        InputError: ``count`` is larger than the number of training subjects, or ``order``
            names a participant with no training cache.
    """
    by_name = sorted(caches, key=lambda path: (path.parent.name, path.name))
    if count > len(by_name):
        raise InputError("training", f"train.training_subjects is {count} but the training "
                                     f"split has {len(by_name)} subjects")
    rank = {label: position for position, label in enumerate(order)}
    missing = sorted(set(rank) - {_participant_of(path) for path in by_name})
    if missing:
        raise InputError("training", f"train.training_order names {', '.join(missing)}, not "
                                     "a training subject (labels as sets.assigned takes them)")
    ordered = sorted(by_name, key=lambda path: rank.get(_participant_of(path), len(rank)))
    chosen = set(ordered[:count])
    return [path for path in by_name if path in chosen] if count else list(caches)


def _participant_of(cache: Path) -> str:
    """The participant label of a training cache, ``sub-<scan_id>_cache.json`` (or its folder
    ``sub-<scan_id>``), sessions dropped."""
    scan = cache.name.removesuffix(CACHE_SUFFIX).removeprefix("sub-")
    return scan.split("_ses-")[0]


def check_training_subjects(train_caches: Sequence[str | Path]) -> None:
    """Refuse a training run without training subjects, naming why there are none.

    Raises:
        InputError: ``train_caches`` is empty.
    """
    if not train_caches:
        raise InputError("training", "no Set A training scans: every scan is in Set B or in "
                                     "the validation or test split (Set A participants come "
                                     "from participants.tsv's set column, or `cesynth import "
                                     "--set A`)")


def train_from_files(train_caches: Sequence[str | Path], val_caches: Sequence[str | Path],
                     out_dir: str | Path, config: Mapping[str, Any],
                     preprocessing: Mapping[str, Any] | None = None,
                     start_from: str | Path | None = None) -> dict[str, Any]:
    """Workflow glue: :func:`train` with settings from the config's ``train`` mapping.

    A workflow reruns training when its settings or its subjects change; only a restart of the
    *same* run (same settings, same caches) may resume. Checkpoints of any other run in
    ``out_dir`` are set aside first (see :func:`cesynth.checkpoint.set_aside_stale_checkpoints`).

    Args:
        train_caches: training cache JSONs.
        val_caches: validation cache JSONs.
        out_dir: output folder.
        config: setting name -> value (:meth:`TrainSettings.from_dict`).
        preprocessing: stored in the checkpoints (see :class:`Trainer`).
        start_from: a trunk's final checkpoint (see :func:`train`).

    Returns:
        As :func:`train`.
    """
    train_paths, val_paths = [Path(p) for p in train_caches], [Path(p) for p in val_caches]
    trunk = Path(start_from) if start_from else None
    settings = TrainSettings.from_dict(config)
    if DistContext.from_env().is_main:
        fingerprint = run_fingerprint(settings, train_paths, val_paths, trunk)
        set_aside_stale_checkpoints(Path(out_dir), fingerprint)
    return train(train_paths, val_paths, Path(out_dir), settings, preprocessing=preprocessing,
                 start_from=trunk)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cesynth.train`` (also under ``torchrun``): train from cache JSONs.

    Returns:
        0 when training completed (SIGTERM exits with :data:`EXIT_PREEMPTED` instead).
    """
    parser = argparse.ArgumentParser(prog="python -m cesynth.train", description=__doc__
                                     .splitlines()[0])
    parser.add_argument("--train-cache", type=Path, nargs="+", required=True)
    parser.add_argument("--val-cache", type=Path, nargs="*", default=[])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--settings", type=Path, help="JSON file of TrainSettings values")
    parser.add_argument("--start-from", type=Path,
                        help="a trunk's checkpoint_final.pt: train only the last stage")
    args = parser.parse_args(argv)
    values = read_json(args.settings) if args.settings else {}
    summary = train_from_files(args.train_cache, args.val_cache, args.out, values,
                               start_from=args.start_from)
    if DistContext.from_env().is_main:
        print(f"best PSNR {summary['best_psnr']:.2f} dB at epoch {summary['best_epoch'] + 1}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["CURVE_PNG", "EXIT_PREEMPTED", "METRICS_JSON", "ChannelSelection", "TrainState",
           "Trainer", "TrainingPreempted", "main", "plot_training_curve", "train",
           "train_from_files", "usable_caches"]
