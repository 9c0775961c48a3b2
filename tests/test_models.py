"""Tests for the CE-T1 generators (cesynth.models): shapes, ablations, registry, trainability."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from cesynth.models import (
    HRFCN,
    MODEL_NAMES,
    Downsample,
    FCNModule,
    UNet,
    build_model,
    channels_last_format,
    count_parameters,
)

TINY = {"width_multiplier": 1 / 16, "blocks_per_module": 1}
# 40 is not divisible by 16, so the tiny U-Nets use 3 levels on the 32x40 grid.
TINY_UNET_LEVELS = 3
GRID = (3, 32, 40)

# Paper profile (width_multiplier 1, 4 ResBlocks per FCN module, 3 inputs, full-size U-Nets).
PAPER_PARAMETERS = {
    "hrfcn3d": 57_494_465,
    "hrfcn2d": 19_521_089,
    "unet2d": 62_457_537,
    "unet3d": 134_634_817,
}


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """Tiny convs on a loaded 2-core machine run far faster without intra-op threading."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _tiny(name: str, in_channels: int = 3, **overrides: object) -> nn.Module:
    if name.startswith("unet"):
        overrides = {"levels": TINY_UNET_LEVELS, **overrides}
    return build_model(name, in_channels, **TINY, **overrides)


def _inputs(in_channels: int, batch: int = 2, grid: tuple[int, int, int] = GRID) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(batch, in_channels, *grid, generator=generator)


@pytest.mark.parametrize("in_channels", [1, 2, 3])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shape_for_every_model(name: str, in_channels: int) -> None:
    model = _tiny(name, in_channels)
    with torch.no_grad():
        output = model(_inputs(in_channels))
    assert output.shape == (2, 1, *GRID)
    assert output.dtype == torch.float32
    assert torch.isfinite(output).all()


def test_channels_last_3d_gives_same_output() -> None:
    model = _tiny("hrfcn3d").eval()
    inputs = _inputs(3)
    with torch.no_grad():
        reference = model(inputs)
        model = model.to(memory_format=torch.channels_last_3d)
        output = model(inputs.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(output, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["hrfcn2d", "unet2d", "unet3d"])
def test_channels_last_format_fits_every_model(name: str) -> None:
    model = _tiny(name)
    model = model.to(memory_format=channels_last_format(model))
    with torch.no_grad():
        output = model(_inputs(3, batch=1).contiguous(memory_format=torch.channels_last_3d))
    assert output.shape == (1, 1, *GRID)


def test_2d_models_treat_slices_independently() -> None:
    model = _tiny("hrfcn2d").eval()
    inputs = _inputs(3)
    with torch.no_grad():
        whole = model(inputs)
        one_slice = model(inputs[:, :, 1:2])
    torch.testing.assert_close(whole[:, :, 1:2], one_slice, atol=1e-5, rtol=1e-5)


def _count(model: nn.Module, module_type: type) -> int:
    return sum(isinstance(m, module_type) for m in model.modules())


def test_model_a_has_one_stem_and_fewer_parameters() -> None:
    final, model_a = _tiny("hrfcn3d"), _tiny("model_a")
    assert len(final.stems) == 3
    assert len(model_a.stems) == 1
    assert count_parameters(model_a) < count_parameters(final)


def test_model_b_has_only_the_high_resolution_branch() -> None:
    final, model_b = _tiny("hrfcn3d"), _tiny("model_b")
    assert set(model_b.stage3) == set(model_b.stage4) == {"1"}
    assert len(model_b.transitions) == 0
    assert _count(model_b, Downsample) == 0
    assert count_parameters(model_b) < count_parameters(final)


def test_model_c_has_no_high_resolution_branch() -> None:
    final, model_c = _tiny("hrfcn3d"), _tiny("model_c")
    assert set(model_c.stage2) == {"2"}
    assert set(model_c.stage3) == set(model_c.stage4) == {"2", "4"}
    # stems + stage-2 + stage-3 + stage-4 FCN modules: 3 + 1 + 2 + 2 versus 3 + 2 + 3 + 3.
    assert _count(model_c, FCNModule) == 8
    assert _count(final, FCNModule) == 11
    assert count_parameters(model_c) < count_parameters(final)


def test_model_d_has_no_repeated_fusion() -> None:
    final, model_d = _tiny("hrfcn3d"), _tiny("model_d")
    # Paper graph: stage 3 has 3 cross-branch inputs (U2 F22, D2 F21, D4 F21), stage 4 has 6.
    assert len(final.fusion) == 9
    assert len(model_d.fusion) == 0
    assert set(model_d.final_upsample) == {"2", "4"}
    assert count_parameters(model_d) < count_parameters(final)


def test_2d_version_has_no_3d_convolutions() -> None:
    model = _tiny("hrfcn2d")
    assert _count(model, nn.Conv3d) == 0
    assert _count(model, nn.Conv2d) > 0
    assert _count(_tiny("unet2d"), nn.Conv3d) == 0
    assert _count(_tiny("hrfcn3d"), nn.Conv2d) == 0


def test_unet_depths_follow_the_paper_baselines() -> None:
    unet2d, unet3d = build_model("unet2d", 1, **TINY), build_model("unet3d", 1, **TINY)
    assert (unet2d.convs_per_level, unet3d.convs_per_level) == (4, 3)
    assert unet2d.levels == unet3d.levels == 4
    assert _count(unet3d, nn.Conv3d) == 9 * 3 + 1


@pytest.mark.parametrize("name", sorted(PAPER_PARAMETERS))
def test_paper_profile_parameter_count(name: str) -> None:
    # On the meta device nothing is allocated: neither weights nor activations.
    with torch.device("meta"):
        model = build_model(name, 3, width_multiplier=1.0, blocks_per_module=4)
    parameters = count_parameters(model)
    print(f"paper-profile {name}: {parameters:,} parameters")
    assert parameters == PAPER_PARAMETERS[name]


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="unknown model 'hrnet'") as error:
        build_model("hrnet", 3)
    for name in MODEL_NAMES:
        assert name in str(error.value)


@pytest.mark.parametrize("kwargs", [{"in_channels": 0}, {"width_multiplier": 0.0}])
def test_invalid_build_arguments(kwargs: dict[str, float]) -> None:
    arguments = {"in_channels": 3, **kwargs}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        build_model("hrfcn3d", **arguments)


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown option"):
        build_model("hrfcn3d", 3, levels=3)


def test_invalid_branches_rejected() -> None:
    with pytest.raises(ValueError, match="branches"):
        HRFCN(3, branches=(1, 8))


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (lambda: _tiny("hrfcn3d"), (1, 3, 3, 32, 42)),
        (lambda: _tiny("hrfcn2d"), (1, 3, 3, 30, 40)),
        (lambda: UNet(3, dims=3, base_width=2, levels=4), (1, 3, 3, 32, 40)),
    ],
)
def test_indivisible_inplane_size_names_the_shape(model, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"divisible by .*\(1, 3, 3, \d+, \d+\)"):
        model()(torch.zeros(shape))


def test_wrong_channel_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="3 input channels"):
        _tiny("hrfcn3d", 3)(torch.zeros(1, 2, *GRID))


def test_tiny_hrfcn_overfits_one_patch() -> None:
    torch.manual_seed(0)
    model = build_model("hrfcn3d", 3, width_multiplier=1 / 8, blocks_per_module=1)
    inputs, target = torch.rand(1, 3, 3, 16, 16), torch.rand(1, 1, 3, 16, 16)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = (model(inputs) - target).abs().mean()
        losses.append(loss.item())
        if losses[-1] <= losses[0] / 10:
            break
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert losses[-1] <= losses[0] / 10, f"L1 {losses[0]:.4f} -> {losses[-1]:.4f}"


@pytest.mark.parametrize("name", ["hrfcn3d", "unet2d"])
def test_same_seed_same_initial_weights(name: str) -> None:
    torch.manual_seed(123)
    first = _tiny(name).state_dict()
    torch.manual_seed(123)
    second = _tiny(name).state_dict()
    torch.manual_seed(124)
    other = _tiny(name).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert any(not torch.equal(first[key], other[key]) for key in first)
