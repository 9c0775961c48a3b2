"""Training loss of the synthesis model: MAE + (1 - SSIM per slice) + local (enhancement) loss.

``loss = l1 * MAE + l2 * (1 - mean slice SSIM) + l3 * local`` (paper eq. 1), where the local
loss is the absolute error inside the rough enhancement mask ``M = (Y - X_T1 > delta)``.

Tensors are ``(N, 1, D, H, W)`` for the prediction and target (``D`` = slices, slice-major as in
:func:`cesynth.normalise.to_slice_major`) and ``(N, C, D, H, W)`` for the model input, whose
channel 0 is the pre-contrast T1. Intensities are expected in [0, 1]; nothing is clamped here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pytorch_msssim import ssim
from torch import Tensor

MAX_SSIM_WINDOW = 11
"""The usual Gaussian SSIM window (sigma 1.5); shrunk only for grids smaller than it."""


@dataclass(frozen=True)
class LossWeights:
    """Trade-off weights of the three loss terms and the enhancement threshold.

    Args:
        l1: weight of the MAE term.
        l2: weight of the SSIM term (``1 - SSIM``, mean over slices).
        l3: weight of the local (enhancement-mask) term.
        delta: threshold on ``Y - X_T1`` that defines the enhancement mask.
    """

    l1: float = 1.0
    l2: float = 1.0
    l3: float = 1.0
    delta: float = 0.1


def enhancement_mask(target: Tensor, t1: Tensor, delta: float) -> Tensor:
    """Rough enhancement (tumour and vessel) mask ``M = Y - X_T1 > delta``, strictly greater.

    Args:
        target: the contrast-enhanced T1 ``Y``.
        t1: the pre-contrast T1 ``X_T1``, same shape as ``target``.
        delta: the threshold.

    Returns:
        A boolean tensor of the same shape, detached from the graph.
    """
    with torch.no_grad():
        return (target - t1) > delta


def ssim_window_size(height: int, width: int) -> int:
    """Gaussian window for slice SSIM: 11, or the largest odd size that fits a smaller slice.

    ``pytorch_msssim`` skips smoothing along an axis shorter than the window, which would turn
    SSIM on tiny demo grids into something else; shrinking the window keeps it a local SSIM.

    Args:
        height: slice rows.
        width: slice columns.

    Returns:
        An odd window size in ``[1, 11]``.
    """
    fit = min(MAX_SSIM_WINDOW, height, width)
    return max(1, fit if fit % 2 == 1 else fit - 1)


def slice_ssim(prediction: Tensor, target: Tensor) -> Tensor:
    """SSIM (data range 1) of every axial slice.

    Args:
        prediction: ``(N, 1, D, H, W)``.
        target: same shape.

    Returns:
        ``(N * D,)`` SSIM values, one per slice.
    """
    n, c, d, h, w = target.shape
    if c != 1:
        raise ValueError(f"expected one output channel, got shape {tuple(target.shape)}")
    as_slices = (n * d, 1, h, w)
    pred_slices = prediction.transpose(1, 2).reshape(as_slices)
    target_slices = target.transpose(1, 2).reshape(as_slices)
    return ssim(pred_slices, target_slices, data_range=1.0, size_average=False,
                win_size=ssim_window_size(h, w))


class SynthesisLoss(torch.nn.Module):
    """The paper's weighted loss ``l1 * MAE + l2 * (1 - SSIM) + l3 * local``.

    The local loss is ``mean |(f(X) - Y) * M|`` over *all* voxels of the batch, normalised like
    the MAE (the paper writes an un-normalised L1 norm); with this choice ``local <= MAE`` and the
    weights keep the meaning the paper gives them relative to the MAE term.

    Args:
        weights: term weights and the enhancement threshold.
    """

    def __init__(self, weights: LossWeights | None = None):
        super().__init__()
        self.weights = weights if weights is not None else LossWeights()

    def forward(self, prediction: Tensor, target: Tensor, t1: Tensor
                ) -> tuple[Tensor, dict[str, float]]:
        """Compute the total loss and its terms.

        Args:
            prediction: ``f(X)``, ``(N, 1, D, H, W)``.
            target: ``Y``, same shape.
            t1: the model input ``(N, C, D, H, W)`` (channel 0 = T1 is used) or the T1 alone
                ``(N, 1, D, H, W)``.

        Returns:
            The total loss (a scalar tensor with gradient to ``prediction``) and the unweighted
            terms ``{"mae", "ssim", "local"}`` as floats for logging (``ssim`` is ``1 - SSIM``).
        """
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} != "
                             f"target shape {tuple(target.shape)}")
        target, t1 = target.detach(), t1[:, :1].detach()  # constants: gradient to f(X) only
        if t1.shape != target.shape:
            raise ValueError(f"T1 shape {tuple(t1.shape)} != target shape {tuple(target.shape)}")
        error = prediction - target
        mae = error.abs().mean()
        ssim_loss = 1.0 - slice_ssim(prediction, target).mean()
        mask = enhancement_mask(target, t1, self.weights.delta)
        local = (error * mask).abs().mean()
        w = self.weights
        total = w.l1 * mae + w.l2 * ssim_loss + w.l3 * local
        terms = {"mae": float(mae.detach()), "ssim": float(ssim_loss.detach()),
                 "local": float(local.detach())}
        return total, terms
