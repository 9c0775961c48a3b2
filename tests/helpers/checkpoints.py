"""Test checkpoints whose predictions exercise clipping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cesynth.cache import INPUT_MODALITIES
from cesynth.data import ValidationVolumes
from cesynth.inference import predict_volume
from cesynth.models import model_from_settings
from cesynth.settings import TrainSettings


def stretch_output(checkpoint_path: Path, settings: TrainSettings, cache: Path) -> None:
    """Rescale the output layer so raw predictions in the brain span about -0.25..1.25.

    A model trained for a few steps predicts a narrow, often negative range, which clipping
    would turn into zeros; this makes both clipping bounds and real values show up in tests.
    """
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    model = model_from_settings(settings)
    model.load_state_dict(checkpoint["model"])
    volumes = ValidationVolumes([cache])[0]
    channels = [INPUT_MODALITIES.index(m) for m in settings.modalities]  # e.g. the T1 alone
    raw = predict_volume(model.eval(), torch.from_numpy(volumes.inputs[channels]))[0].numpy()
    low, high = np.percentile(raw[volumes.mask[0] > 0], [15, 85])
    scale = 1.0 / (high - low)  # output = (raw - low) * scale, the 1x1 output conv rescaled
    state = checkpoint["model"]
    state["output_conv.weight"] = state["output_conv.weight"] * scale
    state["output_conv.bias"] = (state["output_conv.bias"] - low) * scale
    torch.save(checkpoint, checkpoint_path)
