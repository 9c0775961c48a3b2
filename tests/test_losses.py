"""Tests for the synthesis loss (cesynth.losses)."""

from __future__ import annotations

import warnings

import pytest
import torch

from cesynth.losses import (
    LossWeights,
    SynthesisLoss,
    enhancement_mask,
    slice_ssim,
    ssim_window_size,
)

SHAPE = (2, 1, 3, 12, 10)  # N, 1, D, H, W
C1 = 0.01**2  # SSIM luminance constant for data range 1


def _volume(seed: int = 0, shape=SHAPE) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _constant_ssim(a: float, b: float) -> float:
    """SSIM of two constant images: only the luminance term differs from 1."""
    return (2 * a * b + C1) / (a * a + b * b + C1)


def test_identical_images_give_zero_loss():
    target = _volume(1)
    inputs = torch.cat([_volume(2), _volume(3)], dim=1)
    total, terms = SynthesisLoss(LossWeights())(target.clone(), target, inputs)
    assert terms["mae"] == 0.0
    assert terms["local"] == 0.0
    assert terms["ssim"] == pytest.approx(0.0, abs=1e-5)
    assert float(total) == pytest.approx(0.0, abs=1e-5)


def test_mae_is_the_mean_absolute_error():
    target = torch.full(SHAPE, 0.5)
    prediction = torch.zeros(SHAPE)
    prediction[0, 0, 0, 0, 0] = 1.0  # error 0.5 there too
    _, terms = SynthesisLoss()(prediction, target, torch.ones(SHAPE))
    assert terms["mae"] == pytest.approx(0.5)


def test_ssim_term_is_one_minus_the_mean_over_slices():
    shape = (1, 1, 2, 12, 12)
    prediction, target = torch.empty(shape), torch.empty(shape)
    prediction[:, :, 0], target[:, :, 0] = 0.2, 0.6
    prediction[:, :, 1], target[:, :, 1] = 0.5, 0.5
    per_slice = slice_ssim(prediction, target)
    assert per_slice.tolist() == pytest.approx([_constant_ssim(0.2, 0.6), 1.0], abs=1e-5)
    _, terms = SynthesisLoss()(prediction, target, torch.ones(shape))
    expected = 1 - (_constant_ssim(0.2, 0.6) + 1.0) / 2
    assert terms["ssim"] == pytest.approx(expected, abs=1e-5)


def test_enhancement_mask_is_strictly_above_delta():
    t1 = torch.full((1, 1, 1, 1, 4), 0.25)
    target = torch.tensor([0.25, 0.5, 0.5001, 0.75]).reshape(1, 1, 1, 1, 4)
    mask = enhancement_mask(target, t1, delta=0.25)  # 0.5 - 0.25 == delta exactly: outside
    assert mask.dtype == torch.bool
    assert mask.flatten().tolist() == [False, False, True, True]


def test_local_loss_counts_errors_inside_the_mask_only():
    t1 = torch.zeros(SHAPE)
    target = torch.full(SHAPE, 0.05)  # below delta = 0.1: outside the mask
    target[0, 0, 1, 2, 3] = 0.5  # the one enhanced voxel
    loss = SynthesisLoss(LossWeights(delta=0.1))
    prediction = target.clone()
    prediction[1] += 0.3  # errors outside the mask only
    _, outside = loss(prediction, target, t1)
    assert outside["local"] == 0.0
    prediction[0, 0, 1, 2, 3] = 0.1  # error 0.4 inside the mask
    _, inside = loss(prediction, target, t1)
    assert inside["local"] == pytest.approx(0.4 / target.numel())


def test_local_loss_uses_channel_0_of_the_input_as_t1():
    target = torch.full(SHAPE, 0.5)
    t1_low, other = torch.zeros(SHAPE), torch.ones(SHAPE)
    prediction = torch.zeros(SHAPE)
    _, terms = SynthesisLoss()(prediction, target, torch.cat([t1_low, other, other], dim=1))
    assert terms["local"] == pytest.approx(0.5)  # whole volume enhanced against channel 0


def test_weights_scale_the_terms():
    prediction, target = _volume(4), _volume(5)
    t1 = _volume(6) * 0.5
    weights = LossWeights(l1=2.0, l2=3.0, l3=5.0)
    total, terms = SynthesisLoss(weights)(prediction, target, t1)
    expected = 2.0 * terms["mae"] + 3.0 * terms["ssim"] + 5.0 * terms["local"]
    assert terms["local"] > 0
    assert float(total) == pytest.approx(expected, rel=1e-5)
    zero_local, _ = SynthesisLoss(LossWeights(l3=0.0))(prediction, target, t1)
    assert float(zero_local) == pytest.approx(terms["mae"] + terms["ssim"], rel=1e-5)


def test_gradient_reaches_the_prediction_only():
    prediction = _volume(7).requires_grad_(True)
    target = _volume(8).requires_grad_(True)
    inputs = (_volume(9, shape=(2, 3, 3, 12, 10)) * 0.5).requires_grad_(True)
    total, _ = SynthesisLoss()(prediction, target, inputs)
    total.backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0
    assert target.grad is None
    assert inputs.grad is None


@pytest.mark.parametrize(("height", "width", "window"),
                         [(256, 192, 11), (12, 20, 11), (10, 12, 9), (8, 6, 5), (4, 4, 3)])
def test_ssim_window_fits_small_grids(height, width, window):
    assert ssim_window_size(height, width) == window


def test_small_slices_compute_without_skipping_smoothing():
    prediction, target = _volume(10, (1, 1, 3, 8, 6)), _volume(11, (1, 1, 3, 8, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pytorch_msssim warns when it skips smoothing
        values = slice_ssim(prediction, target)
    assert values.shape == (3,)
    assert torch.all(values < 1)
