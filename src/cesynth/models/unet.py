"""U-Net baselines of the paper: 2D per slice (2x depth) and 3D with in-plane pooling (1.5x depth).

"Depth" of the paper's baselines is read as conv layers per level (see :class:`UNet`); the
presets ``unet2d`` and ``unet3d`` live in :func:`cesynth.models.build_model`.
"""

from __future__ import annotations

import torch
from torch import nn

from cesynth.models.blocks import ConvBNReLU, _conv, _inplane, _VolumeModel

__all__ = ["PAPER_UNET_BASE_WIDTH", "ConvStack", "UNet"]

PAPER_UNET_BASE_WIDTH = 64


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
