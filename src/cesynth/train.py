"""Training of the synthesis models: a resumable, seeded trainer organised by lifecycle hooks.

The loop is nnU-Net's: :meth:`Trainer.fit` calls ``on_train_start``, then per epoch
``train_step`` for each batch and ``on_epoch_end`` (validation, best model, checkpoint, stage
switch), then ``on_train_end``. Choices made here (see also the module constants):

* **Stages** (paper: 40 epochs at (1, 1, 1) and lr 1e-4, then 10 at (0.1, 0.1, 10) and 1e-5)
  are consecutive epoch ranges. At a boundary the loss weights are replaced and the learning
  rate of the *same* Adam optimizer is set to the new value; Adam's moment estimates are kept,
  as in a step learning-rate schedule (Adam normalises by the second moment, so the new weights'
  gradient scale is absorbed within a few hundred steps).
* **Data order** is a pure function of ``(seed, epoch, batch index)`` (:mod:`cesynth.data`); the
  epoch index runs on across stages, so stage 2 sees fresh patches. A resumed epoch builds its
  sampler from the first batch not yet done, so nothing is loaded twice.
* **Randomness inside a step** (dropout, if a model has any) comes from ``torch.manual_seed``
  re-seeded from ``(seed, global step, rank)`` before every step, so it does not depend on what
  ran before; the RNG states are saved as well.
* **Validation** predicts each validation subject's foreground slices window by window (3
  slices, stride :attr:`TrainSettings.validation_stride`, default 1, overlapping predictions
  averaged, the last window aligned to the last slice) and reports brain PSNR
  (:func:`psnr_in_mask`) averaged over subjects. ``checkpoint_best.pt`` follows the best PSNR.
* **Checkpoints** (``checkpoint_latest.pt``) are written atomically every
  ``checkpoint_every_steps`` steps, at every epoch end (hence every stage boundary) and on
  SIGTERM. A run restarted with the same arguments resumes from it, exactly on CPU.
* **SIGTERM** (SLURM pre-emption, Snakemake cancelling a job): the current step is finished, a
  checkpoint saved, and the process exits with :data:`EXIT_PREEMPTED` = 143 (128 + SIGTERM, what
  a process killed by SIGTERM reports), raised as :class:`TrainingPreempted` (a ``SystemExit``).
  The job therefore fails and its MLflow run ends FAILED; SLURM's requeue or Snakemake's
  ``--retries`` reruns the job, which continues from the checkpoint.
* **Multi-GPU**: under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in
  DistributedDataParallel (NCCL on CUDA, gloo on CPU), each rank draws its shard of every
  epoch's patches, and only rank 0 writes checkpoints, plots and MLflow records. BatchNorm
  buffers are broadcast from rank 0 before validation and at the end, so all ranks hold the
  same weights.
* **Target** is a setting: ``ceT1w`` (the cache's target array) or one of the cached input
  modalities (``T2w``/``adc`` for the T1->T2 and T1->ADC models), which is then taken from the
  cache's input channels; the model inputs are the cache channels named by ``modalities``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from cesynth.data import (
    PATCH_SLICES,
    TARGET_MODALITY,
    Augmentation,
    EpochSampler,
    PatchDataset,
    ValidationVolumes,
    batch_loader,
)
from cesynth.evaluate import psnr_in_mask
from cesynth.io import InputError, atomic_path, read_json, write_json
from cesynth.losses import LossWeights, SynthesisLoss
from cesynth.models import build_model

_log = logging.getLogger(__name__)

CHECKPOINT_LATEST = "checkpoint_latest.pt"
CHECKPOINT_BEST = "checkpoint_best.pt"
CURVE_PNG = "training_curve.png"
METRICS_JSON = "train_metrics.json"
RUN_FINGERPRINT = "run_fingerprint.txt"
CHECKPOINT_FORMAT = 1
EXIT_PREEMPTED = 143
"""Exit code after a SIGTERM: 128 + 15, as for a process the signal killed."""

# Settings that may differ between a run and its resumption without changing the result.
_RESUME_FREE_SETTINGS = frozenset({"device", "workers", "compile", "checkpoint_every_steps"})


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class Stage:
    """One training stage: a number of epochs with fixed loss weights and learning rate.

    Args:
        epochs: epochs in this stage.
        l1: MAE weight.
        l2: SSIM-loss weight.
        l3: local (enhancement) loss weight.
        lr: Adam learning rate.
    """

    epochs: int
    l1: float
    l2: float
    l3: float
    lr: float


PAPER_STAGES = (Stage(40, 1.0, 1.0, 1.0, 1e-4), Stage(10, 0.1, 0.1, 10.0, 1e-5))


@dataclass(frozen=True)
class TrainSettings:
    """Everything that defines a training run (the MLflow params; stored in checkpoints).

    Args:
        model: :func:`cesynth.models.build_model` name.
        modalities: input channels, by cached modality name; the first must be the T1.
        target: ``ceT1w`` or a cached input modality (T1->T2 / T1->ADC models).
        width_multiplier: model width scale (1 = the paper's 64/128/256).
        blocks_per_module: ResBlocks per FCN module (4 in the paper).
        unet_levels: in-plane downsampling levels of the U-Net baselines (4 on the paper grid;
            the model grid's in-plane size must be divisible by ``2**unet_levels``).
        stages: consecutive training stages.
        delta: enhancement-mask threshold of the local loss.
        batch_size: patches per step and rank (3 in the paper).
        patches_per_subject: random patches drawn per training subject and epoch.
        checkpoint_every_steps: steps between ``checkpoint_latest.pt`` writes (0 = epoch ends
            only).
        seed: seeds model initialisation, patch sampling and per-step randomness.
        workers: data-loader worker processes.
        augment: random left-right flips and input intensity jitter.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        bf16: bfloat16 autocast for the forward pass (CUDA only; ignored on CPU).
        channels_last: channels-last (NDHWC) memory format for model and inputs.
        compile: ``torch.compile`` the model.
        validation_stride: slice stride of the 3-slice validation windows (1 or 3).
    """

    model: str = "hrfcn3d"
    modalities: tuple[str, ...] = ("T1w", "T2w", "adc")
    target: str = TARGET_MODALITY
    width_multiplier: float = 1.0
    blocks_per_module: int = 4
    unet_levels: int = 4
    stages: tuple[Stage, ...] = PAPER_STAGES
    delta: float = 0.1
    batch_size: int = 3
    patches_per_subject: int = 8
    checkpoint_every_steps: int = 200
    seed: int = 0
    workers: int = 0
    augment: bool = False
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    validation_stride: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(self.modalities))
        object.__setattr__(self, "stages", tuple(_as_stage(s) for s in self.stages))
        problems = _setting_problems(self)
        if problems:
            raise ValueError("invalid training settings: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainSettings:
        """Build settings from the workflow's config dict (stages as dicts or 5-lists).

        Args:
            values: setting name -> value; missing names keep their defaults.

        Returns:
            The settings.

        Raises:
            ValueError: an unknown name or an invalid value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {unknown}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """Plain (JSON-able) form, the inverse of :meth:`from_dict`."""
        values = asdict(self)
        values["modalities"] = list(self.modalities)
        values["stages"] = [asdict(stage) for stage in self.stages]
        return values

    @property
    def total_epochs(self) -> int:
        """Epochs over all stages."""
        return sum(stage.epochs for stage in self.stages)

    def stage_of_epoch(self, epoch: int) -> int:
        """Index of the stage that epoch ``epoch`` (0-based, counted over all stages) is in."""
        end = 0
        for index, stage in enumerate(self.stages):
            end += stage.epochs
            if epoch < end:
                return index
        return len(self.stages) - 1


def _as_stage(value: Stage | Mapping[str, Any] | Sequence[float]) -> Stage:
    if isinstance(value, Stage):
        return value
    if isinstance(value, Mapping):
        return Stage(**value)
    epochs, l1, l2, l3, lr = value
    return Stage(int(epochs), float(l1), float(l2), float(l3), float(lr))


def model_from_settings(settings: TrainSettings) -> nn.Module:
    """Build the (freshly initialised, CPU, training-mode) generator that ``settings`` describe.

    Args:
        settings: the run's settings (model name, inputs, width, depth).

    Returns:
        The model of :func:`cesynth.models.build_model`; its weights come from the global torch
        RNG (seed first, or load a checkpoint's ``model`` state dict).
    """
    return build_model(settings.model, len(settings.modalities),
                       width_multiplier=settings.width_multiplier,
                       blocks_per_module=settings.blocks_per_module,
                       unet_levels=settings.unet_levels)


def _setting_problems(settings: TrainSettings) -> list[str]:
    checks = {
        "modalities must not be empty": bool(settings.modalities),
        "stages must not be empty": bool(settings.stages),
        "every stage needs epochs >= 1 and lr > 0":
            all(s.epochs >= 1 and s.lr > 0 for s in settings.stages),
        "unet_levels must be >= 1": settings.unet_levels >= 1,
        "batch_size must be >= 1": settings.batch_size >= 1,
        "patches_per_subject must be >= 1": settings.patches_per_subject >= 1,
        "checkpoint_every_steps must be >= 0": settings.checkpoint_every_steps >= 0,
        "workers must be >= 0": settings.workers >= 0,
        "device must be auto, cpu or cuda": settings.device in ("auto", "cpu", "cuda"),
        "validation_stride must be 1, 2 or 3": settings.validation_stride in (1, 2, 3),
        "target must not also be an input": settings.target not in settings.modalities,
    }
    return [message for message, ok in checks.items() if not ok]


# ---------------------------------------------------------------- metrics and inference


def window_starts(n_slices: int, window: int = PATCH_SLICES, stride: int = 1) -> list[int]:
    """First slices of the windows that cover ``n_slices`` (the last one ends on the last slice).

    Args:
        n_slices: slices of the volume (>= ``window``).
        window: slices per window.
        stride: step between windows.

    Returns:
        Sorted window starts.
    """
    if n_slices < window:
        raise ValueError(f"{n_slices} slices cannot hold a {window}-slice window")
    starts = list(range(0, n_slices - window + 1, stride))
    if starts[-1] != n_slices - window:
        starts.append(n_slices - window)
    return starts


@torch.no_grad()
def predict_volume(model: nn.Module, inputs: torch.Tensor, *, stride: int = 1,
                   batch_size: int = 3, window: int = PATCH_SLICES) -> torch.Tensor:
    """Predict a whole slice-major volume with a 3-slice model, averaging overlapping windows.

    Args:
        model: maps ``(N, C, window, Y, X)`` to ``(N, 1, window, Y, X)``; used as it is (call
            ``model.eval()`` first).
        inputs: ``(C, Z, Y, X)`` on the model's device.
        stride: slices between window starts (1: every slice is predicted up to 3 times).
        batch_size: windows per forward pass.
        window: slices per window.

    Returns:
        ``(1, Z, Y, X)`` float32 prediction on the inputs' device.
    """
    _, n_slices, height, width = inputs.shape
    total = torch.zeros((1, n_slices, height, width), dtype=torch.float32, device=inputs.device)
    counts = torch.zeros((1, n_slices, 1, 1), dtype=torch.float32, device=inputs.device)
    starts = window_starts(n_slices, window, stride)
    for first in range(0, len(starts), batch_size):
        chunk = starts[first:first + batch_size]
        batch = torch.stack([inputs[:, s:s + window] for s in chunk])
        output = model(batch).float()
        for start, predicted in zip(chunk, output, strict=True):
            total[:, start:start + window] += predicted
            counts[:, start:start + window] += 1
    return total / counts


# ---------------------------------------------------------------- tracking


class TrainingTracker(Protocol):
    """Where the trainer reports: MLflow (:class:`MlflowTracker`) or anything with these."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record the resolved settings."""

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        """Record one step's loss terms."""

    def log_epoch(self, step: int, values: Mapping[str, float]) -> None:
        """Record one epoch's validation metrics."""

    def log_final(self, model: nn.Module, input_example: np.ndarray,
                  artifacts: Sequence[Path]) -> None:
        """Record the best model and the result files."""


class MlflowTracker:
    """Logs to the active MLflow run (params, step and epoch metrics, the model, artifacts)."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log the flattened settings as params (idempotent on a resumed run)."""
        import mlflow

        from cesynth.tracking import flatten_params

        run = mlflow.active_run()
        logged = mlflow.get_run(run.info.run_id).data.params if run else {}
        fresh = {k: v for k, v in flatten_params(params).items() if k not in logged}
        if fresh:
            mlflow.log_params(fresh)

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        """Log loss terms as ``train_<name>`` at the global step."""
        import mlflow

        mlflow.log_metrics({f"train_{k}": float(v) for k, v in values.items()}, step=step)

    def log_epoch(self, step: int, values: Mapping[str, float]) -> None:
        """Log validation metrics as ``val_<name>`` at the global step."""
        import mlflow

        finite = {f"val_{k}": float(v) for k, v in values.items() if math.isfinite(v)}
        mlflow.log_metrics(finite, step=step)

    def log_final(self, model: nn.Module, input_example: np.ndarray,
                  artifacts: Sequence[Path]) -> None:
        """Log the model (with signature and input example) and the artifact files."""
        import mlflow
        import mlflow.pytorch
        from mlflow.models import infer_signature

        with torch.no_grad():
            output = model(torch.from_numpy(input_example)).numpy()
        # "pickle" keeps the nn.Module (any batch size); "pt2" would fix the example's batch.
        # Explicit requirements: inferring them re-imports the model in a subprocess (slow).
        # The pickled module needs cesynth importable where it is loaded (cesynth predict).
        mlflow.pytorch.log_model(model, name="model", serialization_format="pickle",
                                 signature=infer_signature(input_example, output),
                                 input_example=input_example,
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                                   f"numpy=={np.__version__}"])
        for path in artifacts:
            if Path(path).exists():
                mlflow.log_artifact(str(path))


def default_tracker() -> TrainingTracker | None:
    """An :class:`MlflowTracker` when an MLflow run is active in this process, else None."""
    mlflow = sys.modules.get("mlflow")  # not imported means no run can be active
    if mlflow is not None and mlflow.active_run() is not None:
        return MlflowTracker()
    return None


# ---------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistContext:
    """This process's place in a (possibly single-process) distributed run.

    Args:
        rank: global rank.
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and logs."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistContext:
        """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as ``torchrun`` sets them."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


@contextlib.contextmanager
def distributed_group(context: DistContext, device: torch.device) -> Iterator[None]:
    """Join the process group for the run (if not joined yet) and leave it afterwards."""
    created = context.enabled and not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                rank=context.rank, world_size=context.world_size)
    try:
        yield
    finally:
        if created:
            dist.destroy_process_group()


def resolve_device(name: str, context: DistContext) -> torch.device:
    """The torch device for a ``device`` setting (``cuda`` picks the local rank's GPU)."""
    use_cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise InputError("device", "cuda requested but no CUDA device is available")
    return torch.device("cuda", context.local_rank) if use_cuda else torch.device("cpu")


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
                 preprocessing: Mapping[str, Any] | None = None):
        self.settings = settings
        self.preprocessing = dict(preprocessing or {})
        self.out_dir = Path(out_dir)
        self.context = context or DistContext.from_env()
        self.tracker = tracker if tracker is not None else default_tracker()
        self.device = resolve_device(settings.device, self.context)
        self.train_caches = usable_caches([Path(p) for p in train_caches], settings.target)
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
        """``checkpoint_best.pt`` in the output folder."""
        return self.out_dir / CHECKPOINT_BEST

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
            seed=self.settings.seed, augmentation=Augmentation() if self.settings.augment else None)
        _check_grid_fits(self.raw_model, self.dataset, self.settings)
        if self.latest_path.exists():
            self.load_checkpoint(self.latest_path)
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
        total, terms = self.loss_fn(prediction.float(), target, inputs[:, :1].float())
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
            ``psnr`` (brain, dB) and ``mae`` (brain) of the subject.
        """
        inputs, target = self.channels.split(torch.from_numpy(subject.inputs),
                                             torch.from_numpy(subject.target), channel_axis=0)
        self.raw_model.eval()
        with self._autocast():
            prediction = predict_volume(self.raw_model, inputs.to(self.device),
                                        stride=self.settings.validation_stride,
                                        batch_size=self.settings.batch_size).cpu()
        brain = subject.mask != 0
        error = np.abs(prediction.numpy() - target.numpy())[brain]
        return {"psnr": psnr_in_mask(prediction, target, subject.mask), "mae": float(error.mean())}

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
        # Without validation subjects "best" is simply the latest epoch.
        improved = not metrics or metrics["psnr"] > state.best_psnr
        if improved:
            state.best_psnr, state.best_epoch = metrics.get("psnr", -math.inf), state.epoch
        state.epoch += 1
        state.step_in_epoch = 0
        self._apply_stage()
        self.save_checkpoint(self.latest_path)
        if improved:
            self.save_checkpoint(self.best_path)

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
            "curve": self.out_dir / CURVE_PNG, "metrics": self.out_dir / METRICS_JSON,
        }
        if self.context.is_main:
            plot_training_curve(state.history, summary["curve"])
            write_json({k: v for k, v in summary.items() if not isinstance(v, Path)} |
                       {"history": state.history}, summary["metrics"])
            if self.tracker:
                self.tracker.log_final(self.best_model(), self.input_example(),
                                       [self.best_path, summary["curve"], summary["metrics"]])
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
            "rng": _rng_states(),
            "world_size": self.context.world_size,
            "preprocessing": self.preprocessing,
        }

    def save_checkpoint(self, path: Path) -> None:
        """Write the checkpoint atomically (rank 0 only)."""
        if not self.context.is_main:
            return
        with atomic_path(path) as tmp:
            torch.save(self.checkpoint_state(), tmp)

    def load_checkpoint(self, path: Path) -> None:
        """Restore model, optimizer, loop position, record and RNG states from ``path``.

        Raises:
            InputError: the checkpoint is unreadable or was written with other settings.
        """
        checkpoint = _read_checkpoint(path)
        _check_resumable(checkpoint, self.settings, self.context, path)
        self.raw_model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.state = TrainState(checkpoint["epoch"], checkpoint["step_in_epoch"],
                                checkpoint["global_step"], checkpoint["best_psnr"],
                                checkpoint["best_epoch"], checkpoint["history"])
        _restore_rng_states(checkpoint["rng"])

    def best_model(self) -> nn.Module:
        """A CPU copy of the model with the best checkpoint's weights, in eval mode."""
        model = self._build_model(on_device=False)
        if self.best_path.exists():
            model.load_state_dict(_read_checkpoint(self.best_path)["model"])
        else:
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
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
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
        sums = torch.tensor([sum(s["psnr"] for s in scores), sum(s["mae"] for s in scores),
                             len(scores)], dtype=torch.float64)
        if self.context.enabled:
            dist.all_reduce(sums)
        psnr_sum, mae_sum, count = sums.tolist()
        if count == 0:
            return {}
        return {"psnr": psnr_sum / count, "mae": mae_sum / count}

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


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                              "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError, ValueError):  # fewer GPUs than when saved
            torch.cuda.set_rng_state_all(states["cuda"])


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        # Our own file; it holds numpy and Python RNG states, which weights_only rejects.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for damaged files
        raise InputError(path, f"unreadable checkpoint ({type(err).__name__}: {err})") from err


def _check_resumable(checkpoint: Mapping[str, Any], settings: TrainSettings,
                     context: DistContext, path: Path) -> None:
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, f"checkpoint format {checkpoint.get('format')} is not "
                         f"{CHECKPOINT_FORMAT}")
    saved, current = checkpoint["settings"], settings.to_dict()
    differing = sorted(k for k in current
                       if k not in _RESUME_FREE_SETTINGS and saved.get(k) != current[k])
    if differing:
        raise InputError(path, f"written with other settings ({', '.join(differing)}); "
                         "use a new output folder")
    if checkpoint.get("world_size", 1) != context.world_size:
        raise InputError(path, f"written by {checkpoint.get('world_size')} processes, "
                         f"resumed with {context.world_size}: the data order would change")


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
          preprocessing: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train (or resume training) a synthesis model; torchrun-aware.

    Args:
        train_caches: cache JSONs (:func:`cesynth.data.cache_subject`) of training subjects.
        val_caches: cache JSONs of validation subjects.
        out_dir: output folder (checkpoints, curve, metrics JSON); rerunning with the same
            folder resumes from ``checkpoint_latest.pt``.
        settings: the run's settings.
        tracker: where to log; default MLflow when a run is active, else nothing.
        preprocessing: stored in the checkpoints (see :class:`Trainer`).

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
                          context=context, preprocessing=preprocessing)
        return trainer.fit()


def train_from_files(train_caches: Sequence[str | Path], val_caches: Sequence[str | Path],
                     out_dir: str | Path, config: Mapping[str, Any],
                     preprocessing: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Workflow glue: :func:`train` with settings from the config's ``train`` mapping.

    A workflow reruns training when its settings or its subjects change; only a restart of the
    *same* run (same settings, same caches) may resume. Checkpoints of any other run in
    ``out_dir`` are set aside first (see :func:`set_aside_stale_checkpoints`).

    Args:
        train_caches: training cache JSONs.
        val_caches: validation cache JSONs.
        out_dir: output folder.
        config: setting name -> value (:meth:`TrainSettings.from_dict`).
        preprocessing: stored in the checkpoints (see :class:`Trainer`).

    Returns:
        As :func:`train`.
    """
    train_paths, val_paths = [Path(p) for p in train_caches], [Path(p) for p in val_caches]
    settings = TrainSettings.from_dict(config)
    if DistContext.from_env().is_main:
        set_aside_stale_checkpoints(Path(out_dir), run_fingerprint(settings, train_paths,
                                                                   val_paths))
    return train(train_paths, val_paths, Path(out_dir), settings, preprocessing=preprocessing)


def run_fingerprint(settings: TrainSettings, train_caches: Sequence[Path],
                    val_caches: Sequence[Path]) -> str:
    """A hash of what defines a run: its settings and its caches (paths and modification times)."""
    caches = [(str(p), p.stat().st_mtime_ns) for p in (*train_caches, *val_caches)]
    payload = json.dumps({"settings": settings.to_dict(), "caches": caches}, sort_keys=True,
                         default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def set_aside_stale_checkpoints(out_dir: Path, fingerprint: str) -> bool:
    """Keep ``out_dir``'s checkpoints only if they belong to the run ``fingerprint`` names.

    Checkpoints of another run are renamed ``*.superseded.pt`` (never deleted) and logged.

    Returns:
        True when a checkpoint of another run was set aside.
    """
    marker = out_dir / RUN_FINGERPRINT
    latest = out_dir / CHECKPOINT_LATEST
    stale = latest.exists() and (not marker.exists() or marker.read_text().strip() != fingerprint)
    if stale:
        for name in (CHECKPOINT_LATEST, CHECKPOINT_BEST):
            if (out_dir / name).exists():
                (out_dir / name).replace(out_dir / name.replace(".pt", ".superseded.pt"))
        _log.warning("%s: checkpoints of an earlier run (other settings or subjects) set aside "
                     "as *.superseded.pt; training starts afresh", out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(marker) as tmp:
        tmp.write_text(fingerprint + "\n")
    return stale


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
    args = parser.parse_args(argv)
    values = read_json(args.settings) if args.settings else {}
    summary = train_from_files(args.train_cache, args.val_cache, args.out, values)
    if DistContext.from_env().is_main:
        print(f"best PSNR {summary['best_psnr']:.2f} dB at epoch {summary['best_epoch'] + 1}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["CHECKPOINT_BEST", "CHECKPOINT_LATEST", "EXIT_PREEMPTED", "MlflowTracker",
           "PAPER_STAGES", "Stage", "TrainSettings", "Trainer", "TrainingPreempted",
           "model_from_settings", "predict_volume", "psnr_in_mask", "train", "train_from_files"]
