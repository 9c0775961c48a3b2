"""The paper's high-resolution FCN generator (HR-FCN) and its ablations Model-A to Model-D.

One :class:`HRFCN` class builds the paper's 3D and 2D HR-FCN and, through its switches, the
ablations (:func:`cesynth.models.build_model` names the presets): Model-A fuses the modalities at
the input (one stem), Model-B keeps only the 1x branch, Model-C drops the 1x branch and Model-D
drops the repeated multi-scale fusion.

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

from collections.abc import Sequence

import torch
from torch import nn

from cesynth.models.blocks import (
    Downsample,
    FCNModule,
    ResBlock,
    Upsample,
    _conv,
    _scaled_width,
    _VolumeModel,
)

__all__ = ["BRANCH_FACTORS", "PAPER_BRANCH_WIDTHS", "HRFCN"]

BRANCH_FACTORS = (1, 2, 4)
PAPER_BRANCH_WIDTHS = {1: 64, 2: 128, 4: 256}


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
