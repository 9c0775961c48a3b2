"""Evaluation metrics (MAE, PSNR, slice SSIM in a region), file checks and summary tables."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from pytorch_msssim import ssim as msssim
from scipy import stats

from cesynth.evaluate import (
    METRIC_COLUMNS,
    evaluate_files,
    evaluate_subject,
    evaluate_volumes,
    flatten_metrics,
    region_metrics,
    ssim_map,
)
from cesynth.evaluation_tables import (
    between_seed_sd,
    format_mean_sd,
    holm,
    paired_ttest,
    pairwise_ttests,
    paper_tables,
    seed_average,
    summarise,
    summarise_configurations,
    tabulate_evaluation,
)
from cesynth.io import InputError

HALF = 5  # half-width of the 11-pixel SSIM window


def smooth_volume(shape=(40, 36, 4), seed=0) -> np.ndarray:
    """A textured volume in [0.2, 0.8] (the SSIM window sees structure)."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    base = 0.5 + 0.2 * np.sin(x / 3.0)[..., None] * np.cos(y / 4.0)[..., None]
    return np.clip(base + 0.05 * rng.standard_normal(shape), 0.2, 0.8)


def reference_ssim(pred: np.ndarray, target: np.ndarray, i: int, j: int, k: int) -> float:
    """Wang et al.'s SSIM at one pixel, written out with the truncated, renormalised window."""
    coords = np.arange(-HALF, HALF + 1)
    gauss = np.exp(-coords**2 / (2 * 1.5**2))
    weights = np.outer(gauss, gauss)
    rows, cols = i + coords, j + coords
    keep_r = (rows >= 0) & (rows < pred.shape[0])
    keep_c = (cols >= 0) & (cols < pred.shape[1])
    w = weights[np.ix_(keep_r, keep_c)]
    w = w / w.sum()
    a = pred[np.ix_(rows[keep_r], cols[keep_c])][..., k]
    b = target[np.ix_(rows[keep_r], cols[keep_c])][..., k]
    mu_a, mu_b = (w * a).sum(), (w * b).sum()
    var_a, var_b = (w * (a - mu_a) ** 2).sum(), (w * (b - mu_b) ** 2).sum()
    cov = (w * (a - mu_a) * (b - mu_b)).sum()
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)
            / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))


def msssim_per_slice(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    def as_batch(volume):
        return torch.from_numpy(np.moveaxis(volume, -1, 0)[:, None].astype(np.float32))

    return msssim(as_batch(pred), as_batch(target), data_range=1.0,
                  size_average=False).numpy()


# ---------------------------------------------------------------- MAE and PSNR


def test_constant_error_gives_hand_mae_and_psnr():
    target = np.full((6, 6, 3), 0.4)
    region = np.ones(target.shape, dtype=bool)
    result = region_metrics(target + 0.05, target, region)
    assert result["mae"] == pytest.approx(0.05)
    assert result["psnr"] == pytest.approx(10 * math.log10(1 / 0.05**2))
    assert result["voxels"] == target.size


def test_mse_is_taken_over_the_region_only():
    target = np.zeros((4, 4, 2))
    pred = target.copy()
    region = np.zeros(target.shape, dtype=bool)
    region[:2, :, 0] = True                  # 8 voxels
    pred[0, :, 0] = 0.2                      # 4 of them off by 0.2: MAE 0.1, MSE 0.02
    pred[3, :, 1] = 0.9                      # outside: ignored
    result = region_metrics(pred, target, region)
    assert result["mae"] == pytest.approx(0.1)
    assert result["psnr"] == pytest.approx(10 * math.log10(1 / 0.02))
    assert result["voxels"] == 8


def test_exact_prediction_has_json_null_psnr():
    target = smooth_volume()
    result = region_metrics(target, target, np.ones(target.shape))
    assert result["psnr"] is None and result["mae"] == 0
    assert json.loads(json.dumps(result))["psnr"] is None
    assert flatten_metrics({"brain": result})["brain_psnr"] == math.inf


def test_errors_away_from_the_region_change_no_metric():
    target = smooth_volume((40, 36, 4))
    pred = np.clip(target + 0.03, 0, 1)
    region = np.zeros(target.shape, dtype=bool)
    region[10:20, 10:20, 1] = True
    before = region_metrics(pred, target, region)
    changed = pred.copy()
    changed[..., 2] = 0.0                          # a slice without region voxels
    changed[26:, :, 1] = 1.0                       # same slice, more than 5 pixels away
    changed[:, 26:, 1] = 0.0
    assert region_metrics(changed, target, region) == before
    changed[20, 15, 1] = 0.0                       # next to the region: SSIM sees it
    after = region_metrics(changed, target, region)
    assert after["mae"] == before["mae"] and after["ssim"] < before["ssim"]


# ---------------------------------------------------------------- SSIM


def test_ssim_of_an_image_with_itself_is_one_and_falls_with_noise():
    target = smooth_volume()
    region = np.ones(target.shape, dtype=bool)
    assert region_metrics(target, target, region)["ssim"] == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(1)
    values = [region_metrics(target + s * rng.standard_normal(target.shape), target,
                             region)["ssim"] for s in (0.01, 0.05, 0.2)]
    assert values[0] < 1 and values[0] > values[1] > values[2]
    assert region_metrics(target + 0.1, target, region)["ssim"] < 1  # luminance term


def test_ssim_map_matches_the_written_out_formula_inside_and_at_the_border():
    target = smooth_volume((20, 17, 2))
    pred = np.clip(target + 0.1 * np.random.default_rng(2).standard_normal(target.shape), 0, 1)
    maps = ssim_map(pred, target)
    assert maps.shape == target.shape
    for i, j, k in [(10, 8, 0), (0, 0, 1), (19, 3, 0), (2, 16, 1)]:
        assert maps[i, j, k] == pytest.approx(reference_ssim(pred, target, i, j, k), abs=1e-10)


def test_ssim_interior_agrees_with_pytorch_msssim():
    target = smooth_volume((40, 36, 4))
    pred = np.clip(target + 0.08 * np.random.default_rng(3).standard_normal(target.shape), 0, 1)
    expected = msssim_per_slice(pred, target)
    interior = ssim_map(pred, target)[HALF:-HALF, HALF:-HALF].mean(axis=(0, 1))
    np.testing.assert_allclose(interior, expected, atol=1e-5)
    region = np.zeros(target.shape, dtype=bool)    # same relation through region_metrics
    region[HALF:-HALF, HALF:-HALF] = True
    ssim = region_metrics(pred, target, region)["ssim"]
    assert ssim == pytest.approx(float(expected.mean()), abs=1e-5)
    whole = region_metrics(pred, target, np.ones(target.shape))["ssim"]
    assert whole == pytest.approx(float(expected.mean()), abs=0.02)  # border windows differ


def test_ssim_averages_slices_not_voxels():
    target = smooth_volume((30, 30, 2))
    pred = target.copy()
    pred[..., 1] = np.clip(target[..., 1] + 0.1, 0, 1)   # slice 0 exact: SSIM 1 there
    region = np.zeros(target.shape, dtype=bool)
    region[15, 15, 0] = True                             # 1 voxel in slice 0
    region[5:25, 5:25, 1] = True                         # 400 voxels in slice 1
    slice1 = ssim_map(pred, target)[5:25, 5:25, 1].mean()
    assert slice1 < 0.99
    assert region_metrics(pred, target, region)["ssim"] == pytest.approx((1 + slice1) / 2)


# ---------------------------------------------------------------- volumes and files


def test_tumor_region_is_reported_only_when_given():
    target = smooth_volume()
    pred = np.clip(target + 0.02, 0, 1)
    brain = np.ones(target.shape, dtype=np.uint8)
    tumor = np.zeros(target.shape, dtype=np.uint8)
    tumor[12:18, 12:18, 1:3] = 1
    pred[12:18, 12:18, 1:3] += 0.2
    without = evaluate_volumes(pred, target, brain)
    with_tumor = evaluate_volumes(pred, target, brain, tumor)
    assert set(without) == {"brain"} and set(with_tumor) == {"brain", "tumor"}
    assert with_tumor["brain"] == without["brain"]
    assert with_tumor["tumor"]["voxels"] == 72
    assert with_tumor["tumor"]["mae"] == pytest.approx(0.22)
    assert with_tumor["tumor"]["psnr"] < with_tumor["brain"]["psnr"]
    flat = flatten_metrics(without)
    assert list(flat) == list(METRIC_COLUMNS)
    assert all(math.isnan(flat[c]) for c in ("tumor_mae", "tumor_psnr", "tumor_ssim"))


def test_empty_region_and_shape_mismatch_are_input_errors():
    target = smooth_volume()
    brain = np.ones(target.shape)
    with pytest.raises(InputError, match="tumor mask: region is empty"):
        evaluate_volumes(target, target, brain, np.zeros(target.shape))
    with pytest.raises(InputError, match=r"brain mask: shape \(40, 36, 3\) differs"):
        evaluate_volumes(target, target, brain[..., :3])
    bad = target.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="prediction: 1 non-finite"):
        evaluate_volumes(bad, target, brain)


def write(path, data, affine=None) -> str:
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32),
                             np.eye(4) if affine is None else affine), str(path))
    return str(path)


def test_evaluate_files_reports_metrics_and_base_names(tmp_path):
    target = smooth_volume()
    pred = target + 0.05
    brain = np.zeros(target.shape)
    brain[5:30, 5:30] = 1
    folder = tmp_path / "patient-Jane-Doe"
    folder.mkdir()
    result = evaluate_files(write(folder / "pred.nii.gz", pred),
                            write(folder / "ce.nii.gz", target),
                            write(folder / "brain.nii.gz", brain))
    assert result["files"] == {"pred": "pred.nii.gz", "target": "ce.nii.gz",
                               "mask": "brain.nii.gz"}
    assert "tumor" not in result and result["brain"]["voxels"] == 25 * 25 * 4
    assert result["brain"]["mae"] == pytest.approx(0.05, abs=1e-6)
    assert result["brain"]["psnr"] == pytest.approx(10 * math.log10(1 / 0.05**2), abs=1e-3)
    assert "Jane" not in json.dumps(result)


def test_evaluate_files_names_the_file_on_another_grid(tmp_path):
    target = smooth_volume()
    pred, ce = write(tmp_path / "pred.nii.gz", target), write(tmp_path / "ce.nii.gz", target)
    small = write(tmp_path / "mask.nii.gz", np.ones((40, 36, 3)))
    with pytest.raises(InputError) as err:
        evaluate_files(pred, ce, small)
    assert err.value.who == small
    assert "(40, 36, 3)" in err.value.problem and "(40, 36, 4)" in err.value.problem
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    tumor = write(tmp_path / "tumor.nii.gz", np.ones(target.shape), shifted)
    brain = write(tmp_path / "brain.nii.gz", np.ones(target.shape))
    with pytest.raises(InputError, match="affine off by 0.5 mm") as err:
        evaluate_files(pred, ce, brain, tumor)
    assert err.value.who == tumor
    with pytest.raises(InputError, match="file not found"):
        evaluate_files(pred, tmp_path / "nope.nii.gz", brain)


# ---------------------------------------------------------------- tables


def per_subject_table() -> pd.DataFrame:
    rows = []
    psnr = {"unet": [26.0, 27.0, 28.0, 25.5, 27.5], "ours": [27.0, 28.5, 28.5, 26.0, 29.0]}
    for model, values in psnr.items():
        for i, value in enumerate(values):
            tumor = 20.0 + i if i >= 3 else math.nan     # subjects 4 and 5 are in Set B
            rows.append({"subject": f"{i + 1:02d}", "set": "B" if i >= 3 else "A",
                         "model": model, "brain_psnr": value, "tumor_psnr": tumor})
    return pd.DataFrame(rows)


def test_summarise_gives_mean_and_sample_sd_per_model():
    table = summarise(per_subject_table())
    assert table["model"].tolist() == ["unet", "ours"]
    unet = table.iloc[0]
    assert unet["n"] == 5
    assert unet["brain_psnr_mean"] == pytest.approx(26.8)
    assert unet["brain_psnr_sd"] == pytest.approx(np.std([26, 27, 28, 25.5, 27.5], ddof=1))
    assert unet["tumor_psnr_mean"] == pytest.approx(23.5)          # NaN rows skipped
    assert unet["tumor_psnr_sd"] == pytest.approx(math.sqrt(0.5))
    by_set = summarise(per_subject_table(), by=("set", "model"))
    assert len(by_set) == 4 and set(by_set["n"]) == {3, 2}


def test_format_mean_sd():
    assert format_mean_sd(28.2371, 1.2649, 2) == "28.24±1.26"
    assert format_mean_sd(0.92314, 0.0409, 3) == "0.923±0.041"
    assert format_mean_sd(21.2, math.nan, 1) == "21.2"


def test_paired_ttest_matches_scipy_and_pairs_by_subject():
    table = per_subject_table()
    result = paired_ttest(table, "brain_psnr", "ours", "unet")
    a = [27.0, 28.5, 28.5, 26.0, 29.0]
    b = [26.0, 27.0, 28.0, 25.5, 27.5]
    expected = stats.ttest_rel(a, b)
    assert result["n"] == 5
    assert result["t"] == pytest.approx(expected.statistic)
    assert result["p"] == pytest.approx(expected.pvalue)
    assert result["mean_difference"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert result["sd_difference"] == pytest.approx(np.std(np.subtract(a, b), ddof=1))
    shuffled = table.sample(frac=1.0, random_state=4)
    assert paired_ttest(shuffled, "brain_psnr", "ours", "unet") == pytest.approx(result)
    unpaired = stats.ttest_rel(a, list(reversed(b)))
    assert not result["t"] == pytest.approx(unpaired.statistic)
    dropped = paired_ttest(table.drop(index=0), "brain_psnr", "ours", "unet")
    assert dropped["n"] == 4
    assert dropped["t"] == pytest.approx(stats.ttest_rel(a[1:], b[1:]).statistic)


def test_paired_ttest_leaves_out_subjects_with_an_infinite_metric():
    table = per_subject_table()
    perfect = (table["model"] == "ours") & (table["subject"] == table["subject"].iloc[0])
    table.loc[perfect, "brain_psnr"] = math.inf
    result = paired_ttest(table, "brain_psnr", "ours", "unet")
    a, b = [28.5, 28.5, 26.0, 29.0], [27.0, 28.0, 25.5, 27.5]
    assert result["n"] == 4
    assert math.isfinite(result["t"]) and math.isfinite(result["sd_difference"])
    assert result["t"] == pytest.approx(stats.ttest_rel(a, b).statistic)


def test_paired_ttest_needs_two_pairs():
    table = per_subject_table()
    assert paired_ttest(table, "tumor_psnr", "ours", "unet")["n"] == 2
    with pytest.raises(InputError, match="at least 2"):
        paired_ttest(table[table["subject"] != "05"], "tumor_psnr", "ours", "unet")


def test_holm_matches_the_textbook_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, max(2*0.03, .), max(1*0.04, 0.06)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_keeps_ties_monotone_and_leaves_untested_out():
    assert holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])
    assert holm([0.9, 0.6, 0.01]) == pytest.approx([1.0, 1.0, 0.03])
    adjusted = holm([math.nan, 0.2, 0.9])  # m = 2: NaN is no test
    assert math.isnan(adjusted[0]) and adjusted[1:] == pytest.approx([0.4, 0.9])
    assert holm([]).size == 0
    assert holm([0.02]) == pytest.approx([0.02])


SEEDED = {"ours": "ours", "ours-seed1": "ours", "ours-seed2": "ours", "unet": "unet",
          "unet-seed1": "unet", "unet-seed2": "unet"}


def seeded_table() -> pd.DataFrame:
    """Two configurations of three seeds each, five Set A patients: brain PSNR by hand."""
    psnr = {"ours": [27.0, 28.0, 29.0, 26.0, 30.0], "ours-seed1": [28.0, 29.0, 30.0, 27.0, 31.0],
            "ours-seed2": [26.0, 27.0, 28.0, 25.0, 29.0],  # per-seed means 28, 29, 27
            "unet": [26.0, 26.5, 27.5, 25.0, 28.0], "unet-seed1": [26.0, 27.0, 27.0, 25.5, 28.5],
            "unet-seed2": [26.0, 26.0, 28.0, 24.5, 27.5]}
    return pd.DataFrame([{"subject": f"{i:02d}", "set": "A", "model": model,
                          "brain_psnr": value, "tumor_psnr": math.nan}
                         for model, values in psnr.items() for i, value in enumerate(values)])


def test_seed_average_is_the_mean_over_a_configurations_seeds_per_patient():
    averaged = seed_average(seeded_table(), SEEDED)
    assert averaged["model"].unique().tolist() == ["ours", "unet"]
    ours = averaged[averaged["model"] == "ours"].set_index("subject")
    assert ours["brain_psnr"].tolist() == pytest.approx([27.0, 28.0, 29.0, 26.0, 30.0])
    assert set(averaged["seeds"]) == {3}
    unet = averaged[averaged["model"] == "unet"].set_index("subject")["brain_psnr"]
    assert unet.tolist() == pytest.approx([26.0, 26.5, 27.5, 25.0, 28.0])
    # without a mapping every model is a configuration of one seed
    assert len(seed_average(seeded_table())) == len(seeded_table())


def test_the_spread_between_seeds_is_the_sd_of_the_per_seed_means():
    spread = between_seed_sd(seeded_table(), SEEDED).set_index("model")
    assert spread.loc["ours", "seeds"] == 3
    assert spread.loc["ours", "brain_psnr_seed_sd"] == pytest.approx(np.std([28, 29, 27], ddof=1))
    one_seed = between_seed_sd(seeded_table()).set_index("model")
    assert one_seed["seeds"].eq(1).all() and one_seed["brain_psnr_seed_sd"].isna().all()


def test_configuration_summary_puts_both_spreads_side_by_side():
    summary = summarise_configurations(seeded_table(), SEEDED).set_index("model")
    ours = summary.loc["ours"]
    assert (ours["n"], ours["seeds"]) == (5, 3)
    assert ours["brain_psnr_mean"] == pytest.approx(28.0)
    assert ours["brain_psnr_sd"] == pytest.approx(np.std([27, 28, 29, 26, 30], ddof=1))
    assert ours["brain_psnr_seed_sd"] == pytest.approx(1.0)
    text = paper_tables(summary.reset_index())
    assert "| ours | 5 | 3 |" in text and "28.00±1.58 (±1.00)" in text
    assert "sd between seeds" in text


def test_seeded_comparisons_test_seed_averaged_patients_with_holm():
    table = seeded_table()
    tests = pairwise_ttests(table, SEEDED)
    row = tests[tests["metric"] == "brain_psnr"].iloc[0]
    averaged = seed_average(table, SEEDED)
    a = averaged[averaged["model"] == "ours"]["brain_psnr"].to_numpy()
    b = averaged[averaged["model"] == "unet"]["brain_psnr"].to_numpy()
    expected = stats.ttest_rel(a, b)
    assert (row["model_a"], row["model_b"], row["n"], row["seeds_a"]) == ("ours", "unet", 5, 3)
    assert row["test"] == "paired t" and row["p"] == pytest.approx(expected.pvalue)
    assert row["p_holm"] == pytest.approx(expected.pvalue)  # one test in its family
    assert row["family"] == "set A brain_psnr: 1 tests"
    # the six seed models unaveraged: 15 comparisons in the family, each p scaled up
    raw = pairwise_ttests(table)
    raw = raw[raw["metric"] == "brain_psnr"]
    assert len(raw) == 15 and (raw["p_holm"] >= raw["p"]).all()
    assert raw["p_holm"].to_numpy() == pytest.approx(holm(raw["p"].to_numpy()))


def test_three_or_fewer_patients_are_descriptive():
    table = seeded_table()
    tests = pairwise_ttests(table[table["subject"].isin(["00", "01", "02"])], SEEDED)
    row = tests[tests["metric"] == "brain_psnr"].iloc[0]
    assert row["test"] == "descriptive" and row["n"] == 3
    assert math.isnan(row["p"]) and math.isnan(row["p_holm"]) and math.isnan(row["t"])
    assert row["mean_difference"] == pytest.approx(np.mean([27 - 26, 28 - 26.5, 29 - 27.5]))


# ---------------------------------------------------------------- the evaluation stage


def write_subject_scores(folder, subject: str, set_name: str, model: str, error: float,
                         tumor: np.ndarray | None = None) -> str:
    """Files of one scored subject: a prediction off by ``error``; returns its metrics JSON."""
    target = smooth_volume(seed=int(subject))
    brain = np.zeros(target.shape)
    brain[5:30, 5:30] = 1
    tumor_path = None if tumor is None else write(folder / f"{subject}_tumor.nii.gz", tumor)
    out = folder / f"{model}_{subject}_metrics.json"
    evaluate_subject(write(folder / f"{model}_{subject}_pred.nii.gz", target + error),
                     write(folder / f"{subject}_ce.nii.gz", target),
                     write(folder / f"{subject}_brain.nii.gz", brain), out, subject=subject,
                     set_name=set_name, model=model, tumor_mask_path=tumor_path)
    return str(out)


def test_an_empty_tumor_mask_gives_a_note_not_a_failure(tmp_path):
    path = write_subject_scores(tmp_path, "07", "B", "ours", 0.1,
                                tumor=np.zeros((40, 36, 4)))
    record = json.loads(open(path).read())
    assert "tumor" not in record and record["brain"]["mae"] == pytest.approx(0.1, abs=1e-6)
    assert record["notes"] == ["07_tumor.nii.gz is empty on the model grid: no tumor metrics"]
    assert (record["subject"], record["set"], record["model"]) == ("07", "B", "ours")


def test_tabulate_evaluation_writes_tables_ttests_and_paper_layout(tmp_path):
    tumor = np.zeros((40, 36, 4))
    tumor[10:16, 10:16, 1:3] = 1
    errors = {"unet": [0.08, 0.07, 0.09, 0.10], "ours": [0.05, 0.06, 0.04, 0.05]}
    jsons = [write_subject_scores(tmp_path, f"{i + 1:02d}", "B" if i == 3 else "A", model,
                                  error, tumor if i == 3 else None)
             for model, values in errors.items() for i, error in enumerate(values)]
    paths = tabulate_evaluation(jsons, tmp_path / "eval")

    metrics = pd.read_csv(paths["metrics"], sep="\t")
    assert len(metrics) == 8 and list(metrics.columns[:3]) == ["subject", "set", "model"]
    set_a = metrics[metrics["set"] == "A"]
    assert set_a["tumor_psnr"].isna().all() and metrics["tumor_psnr"].notna().sum() == 2
    ttests = pd.read_csv(paths["ttests"], sep="\t")
    psnr_a = ttests[(ttests["set"] == "A") & (ttests["metric"] == "brain_psnr")].iloc[0]
    differences = (10 * np.log10(1 / np.square(errors["unet"][:3]))
                   - 10 * np.log10(1 / np.square(errors["ours"][:3])))
    assert (psnr_a["model_a"], psnr_a["model_b"], psnr_a["n"]) == ("unet", "ours", 3)
    # 3 patients: descriptive, the mean difference without a test
    assert psnr_a["test"] == "descriptive" and math.isnan(psnr_a["p"])
    assert psnr_a["mean_difference"] == pytest.approx(differences.mean(), rel=1e-4)
    assert ttests[ttests["set"] == "B"].empty  # one Set B subject: no test
    tables = paths["tables"].read_text()
    assert "## Set A: brain" in tables and "## Set B: brain and tumor" in tables
    assert "| ours | 3 | 1 |" in tables and "| 28.24 |" in tables
    assert "One seed per configuration: the spread between seeds is n/a" in tables
    assert "Holm-adjusted" in tables
    summary = pd.read_csv(paths["summary"], sep="\t")
    ours_a = summary[(summary["set"] == "A") & (summary["model"] == "ours")].iloc[0]
    assert ours_a["brain_mae_mean"] == pytest.approx(0.05, abs=1e-5)


def test_tables_carry_the_endpoint_columns_bootstrap_intervals_and_no_endpoint_section_without(
        tmp_path):
    from cesynth.enhancement import ENDPOINT_COLUMNS
    from cesynth.evaluation_tables import BOOTSTRAP_SEED, THRESHOLD_COLUMNS, bootstrap_interval

    jsons = [write_subject_scores(tmp_path, f"{i + 1:02d}", "A", "ours", error)
             for i, error in enumerate([0.05, 0.06, 0.04])]
    paths = tabulate_evaluation(jsons, tmp_path / "eval")
    metrics = pd.read_csv(paths["metrics"], sep="\t")
    assert list(metrics.columns) == ["subject", "set", "model", *METRIC_COLUMNS,
                                     *ENDPOINT_COLUMNS, *THRESHOLD_COLUMNS]
    assert metrics["enh_auc"].isna().all()  # no T1 and threshold given: no endpoints
    summary = pd.read_csv(paths["summary"], sep="\t")
    row = summary.iloc[0]
    low, high = bootstrap_interval(metrics["brain_mae"].to_numpy(float))
    assert (row["brain_mae_ci_low"], row["brain_mae_ci_high"]) == pytest.approx((low, high))
    assert row["brain_mae_ci_low"] < row["brain_mae_mean"] < row["brain_mae_ci_high"]
    assert BOOTSTRAP_SEED == 20240611
    assert "Enh. AUC" not in paths["tables"].read_text()
    assert pd.read_csv(paths["lesions"], sep="\t").empty
