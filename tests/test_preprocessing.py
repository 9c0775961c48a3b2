"""The preprocessing record every checkpoint stores: built from the workflow's settings and the
training subjects' brain-mask sidecars, resolved (``auto`` -> the method that ran), refused when
the training subjects were masked differently, and old records read with what ran then."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cesynth import __version__, adc_qc, registration
from cesynth.adc import AdcStats
from cesynth.io import InputError, write_json
from cesynth.preprocessing import (
    ADC_DEFAULTS,
    RECORD_FORMAT,
    preprocessing_record,
    read_record,
    requested_settings,
)

REPO = Path(__file__).resolve().parents[1]


def config(**brainmask) -> dict:
    loaded = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    loaded["brainmask"].update(brainmask)
    return loaded


SATURATION_EXCLUDED = {"saturation": "exclude", "saturation_min_share": 1e-4}


def sidecars(root: Path, methods: dict[str, str], reference: str = "ceT1w") -> list[Path]:
    return [write_json({"Method": method, "RequestedMethod": "auto", "Reference": reference},
                       root / f"sub-{subject}_desc-brain_mask.json")
            for subject, method in methods.items()]


def test_the_default_config_and_the_profiles_mask_from_the_ce_t1_as_the_paper_does():
    assert config()["brainmask"]["reference"] == "ceT1w"
    for profile in ("study", "paper"):
        pinned = yaml.safe_load((REPO / "config" / "profiles" / f"{profile}.yaml").read_text())
        assert pinned["brainmask"]["reference"] == "ceT1w", profile


def test_the_record_holds_everything_that_shapes_the_inputs_resolved(tmp_path):
    requested = requested_settings(config())
    record = preprocessing_record(requested, modalities=["T1w", "T2w", "adc"],
                                  mask_sidecars=sidecars(tmp_path, {"01": "deepbet",
                                                                    "02": "deepbet"}))
    assert record["format"] == RECORD_FORMAT
    assert record["model_grid"] == [64, 80, 64]
    assert (record["orientation"], record["slice_axis"]) == ("RAS", 2)
    assert record["normalise"] == "histeq"
    assert record["normalise_options"] == {"nbins": None, "bias_correction": "none",
                                           **SATURATION_EXCLUDED}
    assert record["brainmask"] == "deepbet" and record["brainmask_requested"] == "auto"
    assert record["brainmask_reference"] == "ceT1w"
    assert record["adc"] == {"b_values": [0.0, 500.0, 1000.0], "b_tolerance": 50.0,
                             "min_adc": 0.0, "max_adc": 4e-3, "weighting": "shell",
                             "required_b_values": [0.0]}
    assert record["modalities"] == ["T1w", "T2w", "adc"] and record["target"] == "ceT1w"
    assert record["registration"] == {"seed": 0, **registration.method_record()}
    assert record["cesynth_version"] == __version__
    assert json.loads(json.dumps(record)) == record  # JSON-ready (MLflow, sidecars)


def adc_rows(root: Path, shells: dict[str, tuple[float, ...]]) -> list[Path]:
    """One ADC QC row per subject, fitted from the given shells (as fit_adc writes them)."""
    rows = []
    for subject, b_values in shells.items():
        stats = AdcStats(100, 0, 0, 0, 9e-4, b_values, preferred_shells=len(b_values) == 3)
        rows.append(root / f"sub-{subject}_adc.tsv")
        adc_qc.write_qc_row(stats, subject, rows[-1])
    return rows


def test_the_record_says_which_shells_the_training_adc_was_fitted_from(tmp_path):
    masks = sidecars(tmp_path, {"01": "deepbet", "02": "deepbet", "03": "deepbet"})
    rows = adc_rows(tmp_path, {"01": (0.0, 500.0, 1000.0), "02": (0.0, 1000.0),
                               "03": (0.0, 500.0, 1000.0)})
    requested = requested_settings(config())
    record = preprocessing_record(requested, modalities=["T1w", "T2w", "adc"],
                                  mask_sidecars=masks, adc_qc_rows=rows)
    assert record["adc"]["shells_used"] == {"0/500/1000": 2, "0/1000": 1}
    cascade = preprocessing_record(requested, modalities=["T1w"], target="adc",
                                   mask_sidecars=masks, adc_qc_rows=rows)
    assert cascade["adc"]["shells_used"] == record["adc"]["shells_used"]
    t1_only = preprocessing_record(requested, modalities=["T1w"], mask_sidecars=masks,
                                   adc_qc_rows=rows)
    assert "shells_used" not in t1_only["adc"]  # the model never saw an ADC


def test_the_configured_values_reach_the_record(tmp_path):
    settings = config(method="bet-python", reference="ceT1w")
    settings["adc"]["max_adc"] = 3.0e-3
    settings["registration"]["seed"] = 7
    settings["normalise"]["method"] = "percentile"
    record = preprocessing_record(requested_settings(settings), modalities=["T1w"],
                                  target="T2w",
                                  mask_sidecars=sidecars(tmp_path, {"01": "bet-python"},
                                                         reference="ceT1w"))
    assert record["brainmask"] == "bet-python" and record["brainmask_reference"] == "ceT1w"
    assert record["adc"]["max_adc"] == 3.0e-3 and record["registration"]["seed"] == 7
    assert record["normalise_options"] == {"p_low": 0.5, "p_high": 99.5, "bias_correction": "none",
                                           **SATURATION_EXCLUDED}
    assert (record["modalities"], record["target"]) == (["T1w"], "T2w")


def test_training_subjects_masked_by_different_methods_are_refused_in_one_line(tmp_path):
    masks = sidecars(tmp_path, {"01": "deepbet", "02": "fsl", "03": "deepbet"})
    with pytest.raises(InputError) as caught:
        preprocessing_record(requested_settings(config()), modalities=["T1w"],
                             mask_sidecars=masks)
    assert caught.value.who == "brain masks"
    assert caught.value.problem.startswith(
        "the training subjects were masked by different methods (deepbet: "
        "sub-01_desc-brain_mask.json, sub-03_desc-brain_mask.json; fsl: "
        "sub-02_desc-brain_mask.json)")
    assert "\n" not in str(caught.value) and str(tmp_path) not in str(caught.value)


def test_masks_from_another_image_or_method_than_configured_are_refused(tmp_path):
    with pytest.raises(InputError, match="masked from T1w, not ceT1w"):
        preprocessing_record(requested_settings(config()), modalities=["T1w"],
                             mask_sidecars=sidecars(tmp_path, {"01": "deepbet"}, "T1w"))
    with pytest.raises(InputError, match="masked with deepbet, not fsl"):
        preprocessing_record(requested_settings(config(method="fsl")), modalities=["T1w"],
                             mask_sidecars=sidecars(tmp_path, {"01": "deepbet"}))
    with pytest.raises(InputError, match="cannot be resolved without"):
        preprocessing_record(requested_settings(config()), modalities=["T1w"])


def test_an_old_record_reads_as_what_the_workflow_did_then():
    old = {"model_grid": [32, 40, 32], "normalise": "histeq", "brainmask": "auto"}
    record = read_record(old)
    assert {k: record[k] for k in old} == old  # the old keys, as they were
    assert record["format"] == 1 and record["brainmask_reference"] == "ceT1w"
    assert record["adc"] == ADC_DEFAULTS and record["registration"] == {"seed": 0}
    assert record["normalise_options"] == {"nbins": None, "bias_correction": "none",
                                           "saturation": "keep", "saturation_min_share": 1e-4}
    assert record["cesynth_version"] is None
    assert read_record({}) == {} and read_record(None) == {}
    new = {"format": RECORD_FORMAT, "model_grid": [8, 8, 8], "brainmask": "deepbet"}
    assert read_record(new) == new


def test_a_record_from_before_the_saturation_option_keeps_saturated_voxels():
    """Models trained before saturated voxels were excluded normalised every voxel: predict
    must redo that, not today's default."""
    before = {"format": RECORD_FORMAT, "normalise": "histeq",
              "normalise_options": {"nbins": None, "bias_correction": "n4"}}
    assert read_record(before)["normalise_options"] == {"nbins": None, "bias_correction": "n4",
                                                        "saturation": "keep"}
    assert before["normalise_options"] == {"nbins": None, "bias_correction": "n4"}  # not changed
    today = {**before, "normalise_options": {"nbins": None, "bias_correction": "n4",
                                             **SATURATION_EXCLUDED}}
    assert read_record(today) == today
