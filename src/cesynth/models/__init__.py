"""Generators for CE-T1 synthesis: the registry (names, presets, builders) over the model family.

The package holds the high-resolution FCN of the paper, its ablations and U-Nets:

* :mod:`cesynth.models.blocks`: shared layers (Conv-BN-ReLU, ResBlock, FCN module, in-plane
  down- and upsampling) and the interface every generator shares;
* :mod:`cesynth.models.hrfcn`: the HR-FCN (3D and 2D) and its ablations Model-A to Model-D;
* :mod:`cesynth.models.unet`: the 2D and 3D U-Net baselines;
* this module: the registry (:data:`MODEL_NAMES`, the presets, :func:`build_model`,
  :func:`model_from_settings`) and helpers on built models (:func:`count_parameters`,
  :func:`channels_last_format`). Every public name of the submodules is re-exported here.

Every model shares one interface so that training and inference never branch on the model:

* input ``(N, C, D, H, W)`` float32, ``C`` = number of input modalities (T1 / T1+T2 / T1+T2+ADC),
  ``D`` = slices of the patch (3 in the paper), ``H, W`` in-plane (256 x 192 in the paper);
* output ``(N, 1, D, H, W)``: the synthetic CE-T1 from a final 1x1 convolution, no activation.

2D models (``dims=2``) fold the slices into the batch inside ``forward`` and process every slice
independently. Down- and upsampling are in-plane only, so ``D`` is preserved everywhere (3x3x3
convolutions use padding 1).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch
from torch import nn

from cesynth.models.blocks import (
    UPSAMPLE_MODES,
    ConvBNReLU,
    Downsample,
    FCNModule,
    ResBlock,
    Upsample,
    _scaled_width,
)
from cesynth.models.hrfcn import BRANCH_FACTORS, HRFCN, PAPER_BRANCH_WIDTHS
from cesynth.models.unet import PAPER_UNET_BASE_WIDTH, ConvStack, UNet

if TYPE_CHECKING:
    from cesynth.settings import TrainSettings

__all__ = [
    "MODEL_NAMES",
    "BRANCH_FACTORS",
    "PAPER_BRANCH_WIDTHS",
    "PAPER_UNET_BASE_WIDTH",
    "UPSAMPLE_MODES",
    "ConvBNReLU",
    "ResBlock",
    "FCNModule",
    "Downsample",
    "Upsample",
    "HRFCN",
    "ConvStack",
    "UNet",
    "build_model",
    "model_from_settings",
    "count_parameters",
    "channels_last_format",
]

MODEL_NAMES = (
    "hrfcn3d",
    "hrfcn2d",
    "model_a",
    "model_b",
    "model_c",
    "model_d",
    "unet2d",
    "unet3d",
)


# --------------------------------------------------------------------------- registry

_HRFCN_PRESETS: dict[str, dict[str, object]] = {
    "hrfcn3d": {"dims": 3},
    "hrfcn2d": {"dims": 2},
    "model_a": {"dims": 3, "separate_stems": False},
    "model_b": {"dims": 3, "branches": (1,)},
    "model_c": {"dims": 3, "branches": (2, 4)},
    "model_d": {"dims": 3, "repeated_fusion": False},
}
_UNET_PRESETS: dict[str, dict[str, object]] = {
    "unet2d": {"dims": 2, "convs_per_level": 4},
    "unet3d": {"dims": 3, "convs_per_level": 3},
}


def _keyword_options(model_cls: type) -> tuple[str, ...]:
    params = inspect.signature(model_cls.__init__).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _check_overrides(name: str, model_cls: type, overrides: dict[str, object]) -> None:
    allowed = _keyword_options(model_cls)
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for model {name!r}; allowed: {sorted(allowed)}"
        )


def build_model(
    name: str,
    in_channels: int,
    *,
    width_multiplier: float = 1.0,
    blocks_per_module: int = 4,
    unet_levels: int = 4,
    **overrides: object,
) -> nn.Module:
    """Build a generator by registry name.

    Args:
        name: one of ``MODEL_NAMES``.
        in_channels: number of input modalities (>= 1).
        width_multiplier: scales all widths (HR-FCN 64/128/256, U-Net base width 64).
        blocks_per_module: ResBlocks per FCN module (HR-FCN only; ignored by the U-Nets).
        unet_levels: in-plane downsampling levels (U-Nets only; the model grid's in-plane
            size must be divisible by ``2**unet_levels``; ignored by the HR-FCNs).
        **overrides: constructor keywords overriding the preset (e.g. ``upsample_mode``,
            ``levels``, ``base_width``).

    Returns:
        The model (in training mode, freshly initialised from the global torch RNG).

    Raises:
        ValueError: unknown name (lists the choices), unknown override, or invalid argument.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be an integer >= 1, got {in_channels!r}")
    if not width_multiplier > 0:
        raise ValueError(f"width_multiplier must be > 0, got {width_multiplier!r}")
    if name in _HRFCN_PRESETS:
        _check_overrides(name, HRFCN, overrides)
        options = {**_HRFCN_PRESETS[name], "width_multiplier": width_multiplier,
                   "blocks_per_module": blocks_per_module, **overrides}
        return HRFCN(in_channels, **options)
    _check_overrides(name, UNet, overrides)
    base_width = _scaled_width(PAPER_UNET_BASE_WIDTH, width_multiplier)
    options = {**_UNET_PRESETS[name], "base_width": base_width, "levels": unet_levels,
               **overrides}
    return UNet(in_channels, **options)


def model_from_settings(settings: TrainSettings) -> nn.Module:
    """Build the (freshly initialised, CPU, training-mode) generator that ``settings`` describe.

    Args:
        settings: the run's settings (model name, inputs, width, depth).

    Returns:
        The model of :func:`build_model`; its weights come from the global torch RNG (seed
        first, or load a checkpoint's ``model`` state dict).
    """
    return build_model(settings.model, len(settings.modalities),
                       width_multiplier=settings.width_multiplier,
                       blocks_per_module=settings.blocks_per_module,
                       unet_levels=settings.unet_levels)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters.

    Args:
        model: any module.
        trainable_only: count only parameters with ``requires_grad``.

    Returns:
        Total element count.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def channels_last_format(model: nn.Module) -> torch.memory_format:
    """Channels-last memory format matching the model's weights.

    ``model.to(memory_format=torch.channels_last_3d)`` raises on 2D models (4-D weights), so
    callers should use ``model.to(memory_format=channels_last_format(model))``. Inputs may stay
    ``channels_last_3d`` for every model: they are always 5-D.

    Args:
        model: a generator from :func:`build_model` (``dims`` attribute; 3 assumed otherwise).

    Returns:
        ``torch.channels_last`` for dims=2 models, ``torch.channels_last_3d`` otherwise.
    """
    return torch.channels_last if getattr(model, "dims", 3) == 2 else torch.channels_last_3d
