"""The settings of a training run: its stages and every value that defines it (no torch).

:class:`TrainSettings` is what the workflow's ``train`` config section, the MLflow params and
every checkpoint hold. A run resumes only from a checkpoint written with the same settings, except
the execution-only ones in :data:`EXECUTION_SETTINGS`, which change how a run executes but not its
result. Importing this module does not import torch, so jobs without torch can read settings.

**Stages** (paper: 40 epochs at (1, 1, 1) and lr 1e-4, then 10 at (0.1, 0.1, 10) and 1e-5) are
consecutive epoch ranges; :meth:`TrainSettings.stage_of_epoch` maps an epoch to its stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from cesynth.cache import TARGET_MODALITY
from cesynth.splits import participant_label

EXECUTION_SETTINGS = frozenset({"device", "workers", "compile", "checkpoint_every_steps"})
"""Settings that may differ between a run and its resumption without changing the result."""


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
        training_subjects: train on the first N training subjects (nested subsets for a
            learning curve); 0 = all of them.
        training_order: the order ``training_subjects`` takes subjects in: participant labels
            first, then the unlisted ones in name order (empty: name order).
        enhancing_patch_share: share of each epoch's patches whose slab is drawn in proportion
            to the enhancement it holds (:func:`cesynth.data.slab_enhancement`) instead of
            uniformly; 0 = uniform (the paper's sampling).
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
    training_subjects: int = 0
    training_order: tuple[str, ...] = ()
    enhancing_patch_share: float = 0.0
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
        object.__setattr__(self, "training_order",
                           tuple(participant_label(str(name)) for name in self.training_order))
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
        values["training_order"] = list(self.training_order)
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


def _setting_problems(settings: TrainSettings) -> list[str]:
    checks = {
        "modalities must not be empty": bool(settings.modalities),
        "stages must not be empty": bool(settings.stages),
        "every stage needs epochs >= 1 and lr > 0":
            all(s.epochs >= 1 and s.lr > 0 for s in settings.stages),
        "unet_levels must be >= 1": settings.unet_levels >= 1,
        "batch_size must be >= 1": settings.batch_size >= 1,
        "patches_per_subject must be >= 1": settings.patches_per_subject >= 1,
        "training_subjects must be >= 0": settings.training_subjects >= 0,
        "enhancing_patch_share must be in [0, 1]": 0 <= settings.enhancing_patch_share <= 1,
        "checkpoint_every_steps must be >= 0": settings.checkpoint_every_steps >= 0,
        "workers must be >= 0": settings.workers >= 0,
        "device must be auto, cpu or cuda": settings.device in ("auto", "cpu", "cuda"),
        "validation_stride must be 1, 2 or 3": settings.validation_stride in (1, 2, 3),
        "target must not also be an input": settings.target not in settings.modalities,
    }
    return [message for message, ok in checks.items() if not ok]


__all__ = ["EXECUTION_SETTINGS", "PAPER_STAGES", "Stage", "TrainSettings"]
