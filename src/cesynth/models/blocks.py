"""Shared building blocks of the CE-T1 generators: convolution layers, resampling, the interface.

Everything here acts in-plane only: 3D layers (``dims=3``) never stride, pool or scale the slice
axis ``D``, and 2D layers (``dims=2``) see one slice at a time. :class:`_VolumeModel` is the
interface every generator shares (input checks on ``(N, C, D, H, W)`` and, for 2D models, folding
the slices into the batch); the HR-FCN family (:mod:`cesynth.models.hrfcn`) and the U-Nets
(:mod:`cesynth.models.unet`) are built from these pieces.
"""

from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "UPSAMPLE_MODES",
    "ConvBNReLU",
    "ResBlock",
    "FCNModule",
    "Downsample",
    "Upsample",
]

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


# --------------------------------------------------------------------------- widths


def _scaled_width(width: int, width_multiplier: float) -> int:
    """A paper width scaled by ``width_multiplier`` (at least 1)."""
    return max(1, round(width * width_multiplier))
