"""Sweeps declared in config expand into named experiments that share their first stages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config, validate

from cesynth import experiments

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "config" / "profiles"

STAGES = [{"epochs": 2, "l1": 1.0, "l2": 1.0, "l3": 1.0, "lr": 1e-3},
          {"epochs": 1, "l1": 0.1, "l2": 0.1, "l3": 10.0, "lr": 1e-4}]
TRAIN = {"model": "hrfcn3d", "modalities": ["T1w", "T2w", "adc"], "stages": STAGES,
         "delta": 0.1, "seed": 0, "device": "auto", "workers": 0, "gpus": 0}


def expand(sweeps, declared=None):
    return experiments.expand(TRAIN, declared or {"default": {}}, sweeps, "default")


def test_each_grid_point_is_a_named_experiment():
    found = expand({"delta": {"delta": [0.01, 0.05]}, "models": {"model": ["unet2d"]}})
    assert list(found) == ["default", "delta-0p01", "delta-0p05", "models-unet2d"]
    assert found["delta-0p05"].settings["delta"] == 0.05
    assert found["models-unet2d"].settings["model"] == "unet2d"
    assert found["delta-0p01"].sweeps == (("delta", {"delta": 0.01}),)
    assert "gpus" not in found["default"].settings


def test_a_sweep_set_to_null_is_switched_off():
    found = expand({"delta": None, "models": {"model": ["unet2d"]}})
    assert list(found) == ["default", "models-unet2d"]


def merged_config(*profiles: str) -> dict:
    """config.yaml with the profiles on top, merged and validated as Snakemake does."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for profile in profiles:
        update_config(config, yaml.safe_load((PROFILES / profile).read_text()))
    validate(config, str(REPO / "config" / "config.schema.yaml"))
    return config


def study_models(*profiles: str) -> set[str]:
    config = merged_config("study.yaml", *profiles)
    seeds = config["evaluation"]["seeds"]
    found = experiments.expand(config["train"], config["experiments"], config["sweeps"],
                               config["evaluation"]["reference"], seeds=seeds)
    if config["cascade"]["enabled"]:
        found.update(experiments.cascade_experiments(experiments.seeded_train(
            config["train"], seeds), config["cascade"]["train"]))
    return set(found) | {f"condition {c}" for c in config["evaluation"]["conditions"]}


FINAL_MODEL_SEEDS = {"default", "default-seed1", "default-seed2"}  # study.yaml: seeds 0, 1, 2


def test_the_study_parts_together_are_the_whole_study_each_with_the_final_model():
    parts = [study_models(part) for part in ("study-localloss.yaml", "study-inputs-delta.yaml",
                                              "study-architectures.yaml")]
    assert set.union(*parts) == study_models()
    for first, second in ((0, 1), (0, 2), (1, 2)):
        assert parts[first] & parts[second] == FINAL_MODEL_SEEDS
    assert study_models("study-brainmask.yaml") == FINAL_MODEL_SEEDS


def test_the_study_trains_every_configuration_with_three_seeds():
    config = merged_config("study.yaml")
    assert config["evaluation"]["seeds"] == [0, 1, 2] and config["train"]["seed"] == 0
    models = study_models()
    configurations = {m for m in models if "-seed" not in m and not m.startswith(
        ("cascade-", "condition "))}
    assert len(configurations) == 15
    assert {f"{c}-seed{s}" for c in configurations for s in (1, 2)} <= models
    assert not {"cascade-T2w-seed1", "cascade-adc-seed1"} & models  # the cascade: first seed
    # seed 0 is the committed runs: same names, same settings, so nothing reruns
    unseeded = experiments.expand(config["train"], config["experiments"], config["sweeps"],
                                  "default")
    seeded = experiments.expand(config["train"], config["experiments"], config["sweeps"],
                                "default", seeds=[0, 1, 2])
    assert set(unseeded) == configurations
    assert all(seeded[c].settings == unseeded[c].settings for c in configurations)


def test_part_four_reruns_the_points_parts_one_and_two_cut_for_time():
    part4 = study_models("study-delta-cascade.yaml")
    assert part4 < study_models()
    assert {"delta-0p3", "delta-0p03", "cascade-T2w", "cascade-adc",
            "condition cascade-T2w-adc"} <= part4
    assert not any(name.startswith(("localloss-", "inputs-", "models-")) for name in part4)


def test_a_point_equal_to_the_base_is_the_base_itself():
    found = expand({"lossweights": {"stage2": [[1, 10], [0.1, 10]]}})
    assert list(found) == ["default", "lossweights-1x10"]
    assert found["default"].sweeps == (("lossweights", {"stage2": [0.1, 10]}),)
    last = found["lossweights-1x10"].settings["stages"][-1]
    assert (last["l1"], last["l2"], last["l3"]) == (1.0, 1.0, 10.0)


def test_points_that_differ_only_in_the_last_stage_share_a_trunk():
    found = expand({"lossweights": {"stage2": [[1, 1], [1, 30]]}, "delta": {"delta": [0.3]}})
    trunks = {name: experiments.trunk_id(e.settings) for name, e in found.items()}
    assert trunks["default"] == trunks["lossweights-1x1"] == trunks["lossweights-1x30"]
    assert trunks["delta-0p3"] != trunks["default"]  # delta shapes stage 1's local loss too


def test_execution_settings_change_no_identity_and_no_trunk():
    base = experiments.resolve_settings(TRAIN, {})
    moved = experiments.resolve_settings(TRAIN, {"device": "cuda", "workers": 8, "gpus": 4})
    assert experiments.identity(base) == experiments.identity(moved)
    assert experiments.trunk_id(base) == experiments.trunk_id(moved)
    assert experiments.identity(base) != experiments.identity({**base, "seed": 1})


def test_one_stage_runs_have_no_trunk():
    assert experiments.trunk_id({**TRAIN, "stages": STAGES[:1]}) is None


def test_declared_seeds_repeat_every_configuration_with_its_own_trunk():
    sweeps = {"lossweights": {"stage2": [[1, 10]]}, "models": {"model": ["unet2d"]}}
    found = experiments.expand(TRAIN, {"default": {}}, sweeps, "default", seeds=[0, 1, 2])
    configurations = ["default", "lossweights-1x10", "models-unet2d"]
    assert list(found) == configurations + [f"{c}-seed{s}" for s in (1, 2)
                                            for c in configurations]
    # the first seed is today's run: same name, same identity, nothing reruns
    assert found["default"].settings == expand(sweeps)["default"].settings
    assert found["default"].seed_of is None and found["default"].configuration == "default"
    second = found["lossweights-1x10-seed2"]
    assert second.settings["seed"] == 2 and second.seed_of == "lossweights-1x10"
    assert second.configuration == "lossweights-1x10"
    assert second.sweeps == found["lossweights-1x10"].sweeps
    trunks = {name: experiments.trunk_id(e.settings) for name, e in found.items()}
    for seed in ("", "-seed1", "-seed2"):  # loss-weight points share stage 1 within a seed
        assert trunks[f"default{seed}"] == trunks[f"lossweights-1x10{seed}"]
    assert len({trunks["default"], trunks["default-seed1"], trunks["default-seed2"]}) == 3
    assert experiments.seed_variants(found, "default") == [
        "default", "default-seed1", "default-seed2"]


def test_the_first_declared_seed_replaces_train_seed_and_one_seed_changes_nothing():
    assert experiments.expand(TRAIN, {"default": {}}, {}, "default", seeds=[5])[
        "default"].settings["seed"] == 5
    assert experiments.expand(TRAIN, {"default": {}}, {}, "default", seeds=[0]) == expand({})
    assert experiments.seeded_train(TRAIN, [])["seed"] == TRAIN["seed"]


def test_seeds_declared_twice_or_beside_a_seed_setting_are_refused():
    with pytest.raises(ValueError, match="twice"):
        experiments.expand(TRAIN, {"default": {}}, {}, "default", seeds=[1, 1])
    with pytest.raises(ValueError, match="experiment s5 sets seed"):
        experiments.expand(TRAIN, {"default": {}, "s5": {"seed": 5}}, {}, "default", seeds=[0, 1])
    with pytest.raises(ValueError, match="sweep seeds sets seed"):
        experiments.expand(TRAIN, {"default": {}}, {"seeds": {"seed": [1]}}, "default",
                           seeds=[0, 1])
    with pytest.raises(ValueError, match="already uses"):
        experiments.expand(TRAIN, {"default": {}, "default-seed1": {"delta": 0.2}}, {},
                           "default", seeds=[0, 1])


def test_seed_variants_are_catalogued_under_their_configuration():
    found = experiments.expand(TRAIN, {"default": {}}, {}, "default", seeds=[0, 1])
    row = experiments.catalog_row("default-seed1", found["default-seed1"], "full", "default")
    assert (row["configuration"], row["seed"], row["reference"]) == ("default", 1, False)
    condition = experiments.variant_name("default-seed1", "zero-adc")
    row = experiments.catalog_row(condition, found["default-seed1"], "zero-adc", "default")
    assert row["configuration"] == "default--zero-adc"


def test_multi_key_grids_are_products_with_readable_names():
    found = expand({"grid": {"delta": [0.01], "seed": [1, 2]}})
    assert ["grid-delta0p01-seed1", "grid-delta0p01-seed2"] == list(found)[1:]


@pytest.mark.parametrize(("value", "text"), [
    (0.05, "0p05"), (1e-5, "1em05"), (["T1w", "T2w"], "T1wT2w"), ([0.1, 10], "0p1x10"),
    ("model_a", "modela"), (True, "on"), (3, "3")])
def test_values_format_as_letters_and_digits(value, text):
    assert experiments.format_value(value) == text


def test_an_empty_grid_or_unknown_base_is_refused():
    with pytest.raises(ValueError, match="empty grid"):
        expand({"delta": {"delta": []}})
    with pytest.raises(ValueError, match="not declared"):
        experiments.expand(TRAIN, {"default": {}}, {}, "final")


def test_a_point_whose_name_is_taken_by_another_experiment_is_refused():
    with pytest.raises(ValueError, match="already uses"):
        expand({"delta": {"delta": [0.3]}}, {"default": {}, "delta-0p3": {"seed": 5}})


def test_cascade_models_take_the_t1_alone_with_no_local_loss():
    models = experiments.cascade_experiments(TRAIN, {})
    assert set(models) == {"cascade-T2w", "cascade-adc"}
    settings = models["cascade-adc"].settings
    assert settings["modalities"] == ["T1w"] and settings["target"] == "adc"
    assert all(stage["l3"] == 0.0 for stage in settings["stages"])


@pytest.mark.parametrize(("condition", "parsed"), [
    ("zero-T2w", ("zero", ("T2w",))), ("zero-T2w-adc", ("zero", ("T2w", "adc"))),
    ("zero-FLAIR", ("zero", ("FLAIR",))), ("cascade-T2w-adc", ("cascade", ("T2w", "adc")))])
def test_input_conditions_parse(condition, parsed):
    assert experiments.condition_inputs(condition) == parsed


@pytest.mark.parametrize("condition", ["zero-", "cascade-T1w", "drop-T2w", "cascade-FLAIR",
                                       "zero-PD"])
def test_bad_input_conditions_are_refused(condition):
    with pytest.raises(ValueError, match="unknown input condition"):
        experiments.condition_inputs(condition)


def test_catalog_rows_describe_the_settings_the_tables_select_on():
    found = expand({"inputs": {"modalities": [["T1w"]]}})
    row = experiments.catalog_row("inputs-T1w", found["inputs-T1w"], "full", "default")
    assert row["modalities"] == "T1w" and row["reference"] is False
    assert (row["l1"], row["l3"], row["delta"]) == (0.1, 10.0, 0.1)
    reference = experiments.catalog_row("default", found["default"], "full", "default")
    assert reference["reference"] is True
    floor = experiments.catalog_row("floor-t1", None, "full", "default")
    assert floor["architecture"] == "floor-t1"
