"""Generators for CE-T1 synthesis: the high-resolution FCN of the paper, its ablations and U-Nets.

Every model shares one interface so that training and inference never branch on the model:

* input ``(N, C, D, H, W)`` float32, ``C`` = number of input modalities (T1 / T1+T2 / T1+T2+ADC),
  ``D`` = slices of the patch (3 in the paper), ``H, W`` in-plane (256 x 192 in the paper);
* output ``(N, 1, D, H, W)``: the synthetic CE-T1 from a final 1x1 convolution, no activation.

2D models (``dims=2``) fold the slices into the batch inside ``forward`` and process every slice
independently. Down- and upsampling are in-plane only, so ``D`` is preserved everywhere (3x3x3
convolutions use padding 1).

Interpretation choices (the paper fixes the graph, not every operator):

* ``D2`` is a Conv(k=3, in-plane stride 2)-BN-ReLU producing the destination branch width (as the
  authors' public HRNet code does); ``D4`` is two of them, the first keeping the source width.
* ``U2`` / ``U4`` are parameter-free in-plane interpolation (nearest by default, like Keras
  ``UpSampling3D`` in the authors' code; ``upsample_mode="linear"`` gives bi/trilinear), so an
  upsampled tensor keeps its source width and the following FCN module mixes the concatenation.
* Model-C (no 1x branch): the stem still runs at full resolution, the 2x branch starts from
  ``D2(stem)`` and the final concatenation upsamples the 2x and 4x branches to full resolution
  before the head ResBlock, so the output keeps the input grid.
* Model-D (no repeated fusion): in stages 3 and 4 each branch only processes its own features;
  branches meet only in the final concatenation.
"""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from cesynth.settings import TrainSettings

__all__ = [
    "MODEL_NAMES",
    "BRANCH_FACTORS",
    "PAPER_BRANCH_WIDTHS",
    "ConvBNReLU",
    "ResBlock",
    "FCNModule",
    "Downsample",
    "Upsample",
    "HRFCN",
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
BRANCH_FACTORS = (1, 2, 4)
PAPER_BRANCH_WIDTHS = {1: 64, 2: 128, 4: 256}
PAPER_UNET_BASE_WIDTH = 64
UPSAMPLE_MODES = ("nearest", "linear")


# --------------------------------------------------------------------------- primitives


def _check_dims(dims: int) -> None:
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")


def _inplane(dims: int, factor: int) -> tuple[int, ...]:
    """Stride/scale tuple acting on H and W only (``D`` untouched for 3D)."""
    return (1, factor, factor) if dims == 3 else (factor, factor)


def _conv(
    dims: int, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
    bias: bool = False,
) -> nn.Module:
    conv_cls = nn.Conv3d if dims == 3 else nn.Conv2d
    return conv_cls(
        in_channels, out_channels, kernel_size, stride=_inplane(dims, stride),
        padding=kernel_size // 2, bias=bias,
    )


def _batch_norm(dims: int, channels: int) -> nn.Module:
    return nn.BatchNorm3d(channels) if dims == 3 else nn.BatchNorm2d(channels)


class ConvBNReLU(nn.Sequential):
    """Conv (kernel 3, optional in-plane stride) - BatchNorm - ReLU.

    Args:
        dims: 2 or 3 (Conv2d or Conv3d).
        in_channels: input width.
        out_channels: output width.
        stride: in-plane stride (the slice axis is never strided).
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            _conv(dims, in_channels, out_channels, 3, stride),
            _batch_norm(dims, out_channels),
            nn.ReLU(inplace=True),
        )


class ResBlock(nn.Module):
    """Two Conv-BN(-ReLU) layers with a residual connection (basic ResNet block).

    The shortcut is the identity, or a 1x1 conv + BN when the width changes.

    Args:
        dims: 2 or 3.
        in_channels: input width.
        out_channels: output width.
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(dims, in_channels, out_channels)
        self.conv2 = nn.Sequential(
            _conv(dims, out_channels, out_channels, 3), _batch_norm(dims, out_channels)
        )
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(
                _conv(dims, in_channels, out_channels, 1), _batch_norm(dims, out_channels)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, C_in, [D,] H, W). Returns: (N, C_out, [D,] H, W)."""
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class FCNModule(nn.Sequential):
    """The paper's FCN module phi: ``num_blocks`` ResBlocks, the first one setting the width.

    Args:
        dims: 2 or 3.
        in_channels: input width (e.g. a concatenation of branches).
        out_channels: width of the branch.
        num_blocks: number of ResBlocks (paper: 4).
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, num_blocks: int) -> None:
        blocks = [ResBlock(dims, in_channels, out_channels)]
        blocks += [ResBlock(dims, out_channels, out_channels) for _ in range(num_blocks - 1)]
        super().__init__(*blocks)


class Downsample(nn.Sequential):
    """In-plane downsampling by ``factor`` (power of 2) with strided Conv-BN-ReLU layers.

    Intermediate layers keep ``in_channels``; the last one outputs ``out_channels``.

    Args:
        dims: 2 or 3.
        in_channels: source width.
        out_channels: destination width.
        factor: 2 or 4 (any power of two).
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, factor: int) -> None:
        steps = int(math.log2(factor))
        if factor < 2 or 2**steps != factor:
            raise ValueError(f"downsampling factor must be a power of 2 >= 2, got {factor}")
        widths = [in_channels] * steps + [out_channels]
        super().__init__(
            *(ConvBNReLU(dims, widths[i], widths[i + 1], stride=2) for i in range(steps))
        )


class Upsample(nn.Module):
    """Parameter-free in-plane upsampling by ``factor`` (width unchanged).

    Args:
        dims: 2 or 3.
        factor: in-plane scale factor.
        mode: "nearest" or "linear" (bilinear for 2D, trilinear for 3D).
    """

    def __init__(self, dims: int, factor: int, mode: str = "nearest") -> None:
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"upsample_mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
        self.scale_factor = tuple(float(s) for s in _inplane(dims, factor))
        self.mode = mode if mode == "nearest" else ("trilinear" if dims == 3 else "bilinear")
        self.align_corners = None if mode == "nearest" else False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, C, [D,] h, w). Returns: (N, C, [D,] h*factor, w*factor)."""
        return F.interpolate(
            x, scale_factor=self.scale_factor, mode=self.mode, align_corners=self.align_corners
        )


# --------------------------------------------------------------------------- shared interface


class _VolumeModel(nn.Module, abc.ABC):
    """Input validation and slice folding shared by all generators.

    Subclasses implement ``_forward_grid`` on ``(N, C, D, H, W)`` (dims=3) or ``(N*D, C, H, W)``
    (dims=2).
    """

    def __init__(self, in_channels: int, dims: int, inplane_multiple: int) -> None:
        super().__init__()
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be an integer >= 1, got {in_channels!r}")
        _check_dims(dims)
        self.in_channels = in_channels
        self.dims = dims
        self.inplane_multiple = inplane_multiple

    @abc.abstractmethod
    def _forward_grid(self, x: torch.Tensor) -> torch.Tensor:
        """The network on ``(N, C, D, H, W)`` (dims=3) or ``(N*D, C, H, W)`` (dims=2)."""

    def _check_input(self, x: torch.Tensor) -> None:
        shape = tuple(x.shape)
        if x.dim() != 5:
            raise ValueError(f"expected input of shape (N, C, D, H, W), got shape {shape}")
        if shape[1] != self.in_channels:
            raise ValueError(
                f"expected {self.in_channels} input channels, got shape {shape}"
            )
        multiple = self.inplane_multiple
        if shape[3] % multiple or shape[4] % multiple:
            raise ValueError(
                f"{type(self).__name__}: H and W must be divisible by {multiple}, "
                f"got input shape {shape}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Synthesize CE-T1.

        Args:
            x: (N, C, D, H, W) pre-contrast inputs, C = ``in_channels``.

        Returns:
            (N, 1, D, H, W) synthetic CE-T1.

        Raises:
            ValueError: wrong rank, channel count, or H/W not divisible by ``inplane_multiple``.
        """
        self._check_input(x)
        if self.dims == 3:
            return self._forward_grid(x)
        batch, channels, depth, height, width = x.shape
        slices = x.transpose(1, 2).reshape(batch * depth, channels, height, width)
        out = self._forward_grid(slices)
        return out.reshape(batch, depth, out.shape[1], height, width).transpose(1, 2)


# --------------------------------------------------------------------------- HR-FCN


def _scaled_width(width: int, width_multiplier: float) -> int:
    return max(1, round(width * width_multiplier))


def _validate_branches(branches: Sequence[int]) -> tuple[int, ...]:
    chosen = tuple(sorted(set(branches)))
    if not chosen or any(b not in BRANCH_FACTORS for b in chosen):
        raise ValueError(
            f"branches must be a non-empty subset of {BRANCH_FACTORS}, got {tuple(branches)!r}"
        )
    return chosen


class HRFCN(_VolumeModel):
    """High-resolution FCN generator (paper section III-B) with the ablation switches.

    Graph (paper notation, ``+`` = channel concatenation, phi = FCN module)::

        F11 = phi(T1) + phi(T2) + phi(ADC)       F12 = D2(F11)
        F21 = phi(F11)   F22 = phi(F12)          F23 = D2(F22)
        F31 = phi(F21 + U2(F22))   F32 = phi(D2(F21) + F22)   F33 = phi(D4(F21) + F23)
        F41 = phi(F31 + U2(F32) + U4(F33))
        F42 = phi(D2(F31) + F32 + U2(F33))
        F43 = phi(D4(F31) + D2(F32) + F33)
        F5  = F41 + U2(F42) + U4(F43);  out = Conv1x1(ResBlock(F5))

    (The paper writes ``F32 = phi(F22 + D2(F21))``; concatenation order here always follows the
    branch factor, which only permutes channels.) In stage 3 a branch does not re-fuse the branch
    it was just created from (F33 takes F23 = D2(F22), not F22 again), as in the paper.

    Args:
        in_channels: number of input modalities (>= 1).
        dims: 3 (paper) or 2 (the "2D version": same graph per slice).
        width_multiplier: scales the branch widths 64/128/256.
        blocks_per_module: ResBlocks per FCN module (paper: 4).
        separate_stems: one stem per modality (paper); False = Model-A (one stem, fused at input).
        branches: subset of (1, 2, 4); (1,) = Model-B, (2, 4) = Model-C.
        repeated_fusion: multi-scale fusion in stages 3 and 4; False = Model-D.
        upsample_mode: "nearest" or "linear".
    """

    def __init__(
        self,
        in_channels: int,
        *,
        dims: int = 3,
        width_multiplier: float = 1.0,
        blocks_per_module: int = 4,
        separate_stems: bool = True,
        branches: Sequence[int] = BRANCH_FACTORS,
        repeated_fusion: bool = True,
        upsample_mode: str = "nearest",
    ) -> None:
        chosen = _validate_branches(branches)
        super().__init__(in_channels, dims, inplane_multiple=max(chosen))
        if not width_multiplier > 0:
            raise ValueError(f"width_multiplier must be > 0, got {width_multiplier!r}")
        if not isinstance(blocks_per_module, int) or blocks_per_module < 1:
            raise ValueError(
                f"blocks_per_module must be an integer >= 1, got {blocks_per_module!r}"
            )
        self.branches = chosen
        self.separate_stems = separate_stems
        self.repeated_fusion = repeated_fusion
        self.widths = {
            b: _scaled_width(PAPER_BRANCH_WIDTHS[b], width_multiplier) for b in BRANCH_FACTORS
        }
        self._upsample_mode = upsample_mode
        self._blocks = blocks_per_module
        self._build_stems()
        self._build_stage2()
        self._build_fusion_stages()
        self._build_head()

    # ---- graph plan (pure Python, fixed at construction so forward has no dynamic control flow)

    def _parent(self, branch: int) -> int:
        """Branch a new branch is downsampled from; 0 denotes the stem output F11."""
        if branch == 4 and 2 in self.branches:
            return 2
        return 0

    def _stage2_branches(self) -> tuple[int, ...]:
        return tuple(b for b in self.branches if b in (1, 2))

    def _fusion_sources(self, stage: int, branch: int) -> tuple[int, ...]:
        """Other branches whose previous-stage features branch ``branch`` concatenates."""
        if not self.repeated_fusion:
            return ()
        if stage == 3:
            return tuple(
                b for b in self._stage2_branches() if b not in (branch, self._parent(branch))
            )
        return tuple(b for b in self.branches if b != branch)

    def _fused_width(self, target: int, sources: Sequence[int]) -> int:
        # Downsampled sources arrive at the target width, upsampled ones keep their own.
        return self.widths[target] + sum(
            self.widths[target] if src < target else self.widths[src] for src in sources
        )

    def _resampler(self, source: int, target: int) -> nn.Module:
        if source < target:
            return Downsample(self.dims, self.widths[source], self.widths[target], target // source)
        return Upsample(self.dims, source // target, self._upsample_mode)

    # ---- construction

    def _build_stems(self) -> None:
        num_stems = self.in_channels if self.separate_stems else 1
        stem_in = 1 if self.separate_stems else self.in_channels
        self.stems = nn.ModuleList(
            FCNModule(self.dims, stem_in, self.widths[1], self._blocks) for _ in range(num_stems)
        )
        self.stem_width = num_stems * self.widths[1]

    def _build_stage2(self) -> None:
        self.transitions = nn.ModuleDict()
        self.stage2 = nn.ModuleDict()
        for branch in self._stage2_branches():
            in_width = self.stem_width
            if branch != 1:
                self.transitions[str(branch)] = Downsample(
                    self.dims, self.stem_width, self.widths[branch], branch
                )
                in_width = self.widths[branch]
            self.stage2[str(branch)] = FCNModule(
                self.dims, in_width, self.widths[branch], self._blocks
            )
        if 4 in self.branches:
            parent = self._parent(4)
            parent_width = self.widths[parent] if parent else self.stem_width
            self.transitions["4"] = Downsample(
                self.dims, parent_width, self.widths[4], 4 // max(parent, 1)
            )

    def _build_fusion_stages(self) -> None:
        self.fusion = nn.ModuleDict()
        self.stage3 = nn.ModuleDict()
        self.stage4 = nn.ModuleDict()
        for stage, modules in ((3, self.stage3), (4, self.stage4)):
            for branch in self.branches:
                sources = self._fusion_sources(stage, branch)
                for src in sources:
                    self.fusion[f"s{stage}_{src}to{branch}"] = self._resampler(src, branch)
                modules[str(branch)] = FCNModule(
                    self.dims, self._fused_width(branch, sources), self.widths[branch],
                    self._blocks,
                )

    def _build_head(self) -> None:
        self.final_upsample = nn.ModuleDict(
            {str(b): Upsample(self.dims, b, self._upsample_mode) for b in self.branches if b > 1}
        )
        concat_width = sum(self.widths[b] for b in self.branches)
        self.head_block = ResBlock(self.dims, concat_width, self.widths[1])
        self.output_conv = _conv(self.dims, self.widths[1], 1, kernel_size=1, bias=True)

    # ---- forward

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        if not self.separate_stems:
            return self.stems[0](x)
        return torch.cat([stem(x[:, i : i + 1]) for i, stem in enumerate(self.stems)], dim=1)

    def _run_stage2(self, f11: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
        processed: dict[int, torch.Tensor] = {}
        for branch in self._stage2_branches():
            entry = f11 if branch == 1 else self.transitions[str(branch)](f11)
            processed[branch] = self.stage2[str(branch)](entry)
        f23 = None
        if 4 in self.branches:
            parent = self._parent(4)
            f23 = self.transitions["4"](processed[parent] if parent else f11)
        return processed, f23

    def _run_fusion_stage(
        self, stage: int, previous: dict[int, torch.Tensor], modules: nn.ModuleDict
    ) -> dict[int, torch.Tensor]:
        outputs: dict[int, torch.Tensor] = {}
        for branch in self.branches:
            sources = self._fusion_sources(stage, branch)
            parts = {branch: previous[branch]}
            for src in sources:
                parts[src] = self.fusion[f"s{stage}_{src}to{branch}"](previous[src])
            fused = torch.cat([parts[b] for b in sorted(parts)], dim=1)
            outputs[branch] = modules[str(branch)](fused)
        return outputs

    def _forward_grid(self, x: torch.Tensor) -> torch.Tensor:
        f11 = self._stem(x)
        stage2, f23 = self._run_stage2(f11)
        stage3_inputs = dict(stage2)
        if f23 is not None:
            stage3_inputs[4] = f23
        stage3 = self._run_fusion_stage(3, stage3_inputs, self.stage3)
        stage4 = self._run_fusion_stage(4, stage3, self.stage4)
        full_res = [
            stage4[b] if b == 1 else self.final_upsample[str(b)](stage4[b]) for b in self.branches
        ]
        return self.output_conv(self.head_block(torch.cat(full_res, dim=1)))


# --------------------------------------------------------------------------- U-Net


class ConvStack(nn.Sequential):
    """``num_convs`` Conv-BN-ReLU layers (one U-Net level).

    Args:
        dims: 2 or 3.
        in_channels: input width.
        out_channels: width of every layer.
        num_convs: number of conv layers (original U-Net: 2).
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, num_convs: int) -> None:
        widths = [in_channels] + [out_channels] * num_convs
        super().__init__(*(ConvBNReLU(dims, widths[i], widths[i + 1]) for i in range(num_convs)))


class UNet(_VolumeModel):
    """U-Net baseline (2D per slice or 3D with in-plane pooling only).

    "Depth" of the paper's baselines is read as conv layers per level: the original U-Net has 2,
    the 2D baseline (2x depth) 4 and the 3D baseline (1.5x depth) 3. Each level halves H and W
    with max-pooling and doubles the width; the decoder uses in-plane transposed convolutions
    (kernel 2, stride 2) and concatenation skips. BatchNorm follows every conv.

    Args:
        in_channels: number of input modalities (>= 1).
        dims: 2 (per slice) or 3.
        base_width: width of the first level (original U-Net: 64).
        levels: number of in-plane downsampling levels (H, W must be divisible by 2**levels).
        convs_per_level: conv layers per level; default 4 (dims=2) or 3 (dims=3).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        dims: int = 2,
        base_width: int = PAPER_UNET_BASE_WIDTH,
        levels: int = 4,
        convs_per_level: int | None = None,
    ) -> None:
        if not isinstance(levels, int) or levels < 1:
            raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
        super().__init__(in_channels, dims, inplane_multiple=2**levels)
        if not isinstance(base_width, int) or base_width < 1:
            raise ValueError(f"base_width must be an integer >= 1, got {base_width!r}")
        if convs_per_level is None:
            convs_per_level = 4 if dims == 2 else 3
        if convs_per_level < 1:
            raise ValueError(f"convs_per_level must be >= 1, got {convs_per_level!r}")
        self.levels = levels
        self.convs_per_level = convs_per_level
        widths = [base_width * 2**level for level in range(levels + 1)]
        pool_cls = nn.MaxPool3d if dims == 3 else nn.MaxPool2d
        up_cls = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
        pool_window = _inplane(dims, 2)
        self.encoder = nn.ModuleList(
            ConvStack(dims, in_channels if level == 0 else widths[level - 1], width,
                      convs_per_level)
            for level, width in enumerate(widths)
        )
        self.pools = nn.ModuleList(pool_cls(pool_window, pool_window) for _ in range(levels))
        self.upconvs = nn.ModuleList(
            up_cls(widths[level + 1], widths[level], pool_window, stride=pool_window)
            for level in range(levels)
        )
        self.decoder = nn.ModuleList(
            ConvStack(dims, 2 * widths[level], widths[level], convs_per_level)
            for level in range(levels)
        )
        self.output_conv = _conv(dims, widths[0], 1, kernel_size=1, bias=True)

    def _forward_grid(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        features = self.encoder[0](x)
        for level in range(self.levels):
            skips.append(features)
            features = self.encoder[level + 1](self.pools[level](features))
        for level in reversed(range(self.levels)):
            upsampled = self.upconvs[level](features)
            features = self.decoder[level](torch.cat([skips[level], upsampled], dim=1))
        return self.output_conv(features)


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
