"""The paper's tables, figures and report (cesynth.paper, cesynth.paper_figures,
cesynth.paper_report) from small hand-built evaluation results."""

from __future__ import annotations

import math
import re

import matplotlib.image
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cesynth import paper, paper_figures, paper_report
from cesynth.evaluate import METRIC_COLUMNS
from cesynth.evaluation_tables import holm
from cesynth.io import InputError, read_tsv, write_tsv

BASE = {"experiment": "final", "variant": "full", "architecture": "hrfcn3d",
        "modalities": "T1w+T2w+adc", "l1": 0.1, "l3": 10.0, "delta": 0.1, "seed": 0,
        "reference": False}
CHANGES = {  # model -> what differs from the reference (experiment named as a sweep would)
    "final": {"reference": True},
    "unet2d": {"experiment": "models-unet2d", "architecture": "unet2d"},
    "unet3d-seed1": {"experiment": "x", "architecture": "unet3d", "seed": 1},  # two columns
    "model-a": {"experiment": "models-a", "architecture": "model_a"},
    "t1": {"experiment": "inputs-t1", "modalities": "T1w"},
    "t1t2": {"experiment": "inputs-t1t2", "modalities": "T1w+T2w"},
    "lw-1-1": {"experiment": "lw-1-1", "l1": 1.0, "l3": 1.0},
    "lw-1-30": {"experiment": "lw-1-30", "l1": 1.0, "l3": 30.0},
    "lw-seed": {"experiment": "lw-seed", "l1": 1.0, "seed": 2},  # l1 and seed: in no figure
    "delta-0.01": {"experiment": "delta-0.01", "delta": 0.01},
    "delta-0.3": {"experiment": "delta-0.3", "delta": 0.3},
    "final-cascade-adc": {"variant": "cascade-adc"},
    "final-zero-T2w": {"variant": "zero-T2w"},
    "floor-t1": {"experiment": "floor-t1", "architecture": "floor-t1", "modalities": "T1w",
                 "l1": math.nan, "l3": math.nan, "delta": math.nan, "seed": math.nan},
    "floor-regression": {"experiment": "floor-regression", "architecture": "floor-regression",
                         "l1": math.nan, "l3": math.nan, "delta": math.nan, "seed": math.nan},
}
SET_A, SET_B = [f"a{i}" for i in range(5)], [f"b{i}" for i in range(6)]


def make_catalog(models=tuple(CHANGES)) -> pd.DataFrame:
    return pd.DataFrame([{"model": m, **BASE, **CHANGES[m]} for m in models])


def make_per_subject(models=tuple(CHANGES), seed=0) -> pd.DataFrame:
    """Every model scored on every subject: brain metrics in A and B, tumor metrics in B."""
    rng = np.random.default_rng(seed)
    rows = []
    for offset, model in enumerate(models):
        for set_name, subjects in (("A", SET_A), ("B", SET_B)):
            for subject in subjects:
                row = {"subject": subject, "set": set_name, "model": model}
                row |= {c: rng.uniform(0.02, 0.9) for c in METRIC_COLUMNS}
                row["brain_psnr"] = 25.0 + 0.3 * offset + rng.normal()
                if set_name == "A":
                    row |= {c: math.nan for c in METRIC_COLUMNS if c.startswith("tumor")}
                else:
                    row["tumor_psnr"] = 18.0 + 0.2 * offset + rng.normal()
                rows.append(row)
    return pd.DataFrame(rows)


def spec(name: str) -> paper.TableSpec:
    return next(s for s in paper.TABLES if s.name == name)


def read_png(path) -> np.ndarray:
    image = matplotlib.image.imread(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return image


# ---------------------------------------------------------------- selection


def test_differs_only_in_excludes_rows_differing_in_two_columns():
    catalog = make_catalog()
    rows = paper.differs_only_in(catalog, ["architecture"])
    assert rows["model"].tolist() == ["unet2d", "model-a"]  # not unet3d-seed1, not floors
    weights = paper.differs_only_in(catalog, ["l1", "l3"])
    assert weights["model"].tolist() == ["lw-1-1", "lw-1-30"]  # not lw-seed, not final


def test_table_rows_keep_allowed_values_and_end_with_the_reference():
    catalog = make_catalog()
    assert paper.table_rows(catalog, spec("table1"))["model"].tolist() == ["unet2d", "final"]
    assert paper.table_rows(catalog, spec("table5"))["model"].tolist() == ["model-a", "final"]
    assert paper.table_rows(catalog, spec("table3"))["model"].tolist() == ["t1", "t1t2", "final"]
    floors = paper.table_rows(catalog, spec("floors"))["model"].tolist()
    assert floors == ["floor-t1", "floor-regression", "final"]


def test_selection_compares_numbers_read_back_as_text(tmp_path):
    path = tmp_path / "catalog.tsv"
    make_catalog().to_csv(path, sep="\t", index=False)
    as_text = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False,
                          na_values=["", "nan"])
    assert as_text.loc[0, "l1"] == "0.1" and as_text.loc[0, "reference"] == "True"
    rows = paper.differs_only_in(as_text, ["delta"])
    assert rows["model"].tolist() == ["delta-0.01", "delta-0.3"]


@pytest.mark.parametrize("flags", [[False, False], [True, True]])
def test_catalog_needs_exactly_one_reference(flags):
    catalog = make_catalog(("final", "unet2d")).assign(reference=flags)
    with pytest.raises(InputError, match="reference"):
        paper.check_catalog(catalog)


def test_per_subject_rejects_a_subject_listed_twice():
    per_subject = make_per_subject(("final",))
    with pytest.raises(InputError, match="more than once"):
        paper.check_per_subject(pd.concat([per_subject, per_subject.iloc[:1]]))


# ---------------------------------------------------------------- statistics


def hand_table(model_psnr, reference_psnr) -> pd.DataFrame:
    """Set A brain PSNR of two models; None = subject not scored for that model."""
    rows = []
    for model, values in (("m", model_psnr), ("final", reference_psnr)):
        for i, value in enumerate(values):
            if value is not None:
                rows.append({"subject": f"s{i}", "set": "A", "model": model,
                             "brain_psnr": value})
    return pd.DataFrame(rows)


def test_paired_effect_matches_scipy_on_the_common_subjects():
    model = [20.0, 21.0, 23.0, 22.0, None]
    reference = [21.0, 21.5, 24.0, 22.2, 30.0]  # s4 scored for the reference only
    effect = paper.paired_effect(hand_table(model, reference), "A_brain_psnr", "m", "final")
    expected = stats.ttest_rel(model[:4], reference[:4])
    assert effect["n"] == 4
    assert effect["p"] == pytest.approx(expected.pvalue, rel=1e-12)
    assert effect["t"] == pytest.approx(expected.statistic, rel=1e-12)
    assert effect["mean_difference"] == pytest.approx(-0.675)


def test_cohen_dz_is_mean_over_sd_of_the_differences():
    # differences 1, 2, 3: mean 2, sample sd 1, so d_z = 2
    effect = paper.paired_effect(hand_table([11.0, 12.0, 13.0], [10.0, 10.0, 10.0]),
                                 "A_brain_psnr", "m", "final")
    assert effect["cohen_dz"] == pytest.approx(2.0)
    assert effect["mean_difference"] == pytest.approx(2.0)


def test_paired_effect_with_one_pair_is_undefined():
    effect = paper.paired_effect(hand_table([11.0, None], [10.0, 9.0]), "A_brain_psnr", "m",
                                 "final")
    assert effect["n"] == 1 and math.isnan(effect["p"]) and math.isnan(effect["cohen_dz"])


def test_build_table_scores_tests_and_paper_values():
    per_subject, catalog = make_per_subject(), make_catalog()
    table = paper.build_table(per_subject, catalog, spec("table1"))
    assert table["model"].tolist() == ["unet2d", "final"]
    unet = per_subject[(per_subject["model"] == "unet2d") & (per_subject["set"] == "A")]
    final = per_subject[(per_subject["model"] == "final") & (per_subject["set"] == "A")]
    row, ref = table.iloc[0], table.iloc[1]
    assert row["A_brain_psnr_mean"] == pytest.approx(unet["brain_psnr"].mean())
    assert row["A_brain_psnr_sd"] == pytest.approx(unet["brain_psnr"].std(ddof=1))
    assert row["A_n"] == len(SET_A)
    expected = stats.ttest_rel(unet["brain_psnr"].to_numpy(), final["brain_psnr"].to_numpy())
    assert row["A_brain_psnr_p"] == pytest.approx(expected.pvalue)
    assert row["A_brain_psnr_n_pairs"] == len(SET_A)
    assert math.isnan(ref["A_brain_psnr_p"])
    assert (row["paper_row"], row["paper_A_brain_psnr_mean"]) == ("U-Net (2D)", 26.86)
    assert (ref["paper_row"], ref["paper_A_brain_ssim_sd"]) == ("Ours (3D)", 0.041)


def test_table_two_tests_tumor_psnr_in_set_b():
    per_subject, catalog = make_per_subject(), make_catalog()
    row = paper.build_table(per_subject, catalog, spec("table2")).iloc[0]
    b = per_subject[per_subject["set"] == "B"].set_index("subject")
    unet, final = b[b["model"] == "unet2d"], b[b["model"] == "final"]
    expected = stats.ttest_rel(unet["tumor_psnr"], final.loc[unet.index, "tumor_psnr"])
    assert row["B_tumor_psnr_p"] == pytest.approx(expected.pvalue)
    assert row["B_n"] == len(SET_B)


def test_modalities_match_the_paper_rows_in_any_order():
    catalog = make_catalog(("final", "t1", "t1t2"))
    catalog.loc[catalog["model"] == "t1t2", "modalities"] = "t2w+T1w"
    table = paper.build_table(make_per_subject(("final", "t1", "t1t2")), catalog, spec("table3"))
    assert table["paper_row"].tolist() == ["T1", "T1+T2", "T1+T2+ADC"]


# ---------------------------------------------------------------- the paper's values


def test_paper_values_hold_the_papers_tables():
    values = paper.PAPER_VALUES
    assert values["table1"]["U-Net (3D)"]["A_brain_psnr"] == (27.21, 1.18)
    assert values["table1"]["Ours (3D)"]["A_brain_mae"] == (0.029, 0.005)
    assert values["table2"]["Ref [21]"]["B_tumor_psnr"] == (20.15, 4.70)
    assert values["table3"]["T1"]["B_brain_ssim"] == (0.898, 0.022)
    assert values["table5"]["Model-B"]["B_tumor_psnr"] == (19.54, 2.38)
    assert set(values) == {"table1", "table2", "table3", "table5"}


# The tables' lines as the paper's extracted text prints them ("+", "x", "£" stand for "±").
PAPER_LINES = {
    "table1": ("Ref [21] N/A 22.97+1.16 | 0.872+0.031",
               "U-Net (2D) | 0.033+0.005 | 26.86+1.05 | 0.905+0.038",
               "U-Net (3D) | 0.032+0.004 | 27.21+1.18 | 0.908+0.038",
               "Ours (2D) | 0.030+0.005 | 27.87+1.30 | 0.915+0.039",
               "Ours (3D) | 0.029+0.005 | 28.24+1.26 | 0.923+0.041"),
    "table2": ("Ref [21] 22.97+1.16 | 20.15+4.70 | 0.872+0.031",
               "UNet (2D) | 26.44+1.40 | 18.45+2.22 | 0.896+0.022",
               "UNet (3D) | 26.79+1.26 | 18.89+2.38 | 0.899+0.022",
               "Ours (2D) | 27.22+1.21 | 19.64+2.59 | 0.903+0.023",
               "Ours (3D) | 27.62+1.34 | 21.2+2.36 | 0.909+0.023"),
    "table5": ("Model-A 27.68+1.31 | 27.26x1.28 | 20.63+2.46",
               "Model-B 26.42+1.12 | 26.32+1.20 | 19.54+2.38",
               "Model-C 27.20£1.22 | 27.04+1.19 | 20.39+2.44",
               "Model-D 27.36+1.20 | 27.08+1.18 | 20.68+2.32",
               "Final-Model | 28.24+1.26 | 27.62+1.34 | 21.20+2.36"),
}
PAPER_COLUMNS = {"table1": ("A_brain_mae", "A_brain_psnr", "A_brain_ssim"),
                 "table2": ("B_brain_psnr", "B_tumor_psnr", "B_brain_ssim"),
                 "table5": ("A_brain_psnr", "B_brain_psnr", "B_tumor_psnr")}
# Table III by rows of metrics, columns T1, T1+T2, T1+T2+ADC; the text prints the last cell
# "21.242.36", read as 21.2+2.36.
PAPER_TABLE3 = {"A_brain_psnr": "PSNR 27.4+1.28 27.9+1.24 28.24+1.26",
                "A_brain_ssim": "SSIM | 0.914+0.040 | 0.920+0.040 | 0.923+0.041",
                "B_brain_psnr": "PSNR 26.7+1.23 27.3+1.27 27.62+1.34",
                "B_brain_ssim": "SSIM | 0.898+0.022 | 0.905+0.023 | 0.909+0.023",
                "B_tumor_psnr": "B-Tumor | PSNR 19.8+2.32 20.8+2.30 21.2+2.36"}


def printed_pairs(line: str) -> list[tuple[float, float]]:
    return [(float(m), float(s)) for m, s in re.findall(r"(\d+\.\d+)[+x£](\d+\.\d+)", line)]


@pytest.mark.parametrize("table", sorted(PAPER_LINES))
def test_paper_values_match_the_printed_rows(table):
    values = paper.PAPER_VALUES[table]
    assert len(values) == len(PAPER_LINES[table])
    for row, cells in values.items():
        line = next(li for li in PAPER_LINES[table] if li.startswith(row))
        expected = [cells[key] for key in PAPER_COLUMNS[table] if key in cells]
        assert printed_pairs(line) == expected, row


def test_paper_values_match_the_printed_table_three():
    values = paper.PAPER_VALUES["table3"]
    assert list(values) == ["T1", "T1+T2", "T1+T2+ADC"]
    for key, line in PAPER_TABLE3.items():
        assert printed_pairs(line) == [values[row][key] for row in values], key


def test_the_final_model_reads_the_same_in_every_paper_table():
    final = {name: paper.PAPER_VALUES[name][row] for name, row in paper.PAPER_FINAL_ROW.items()}
    for key in ("A_brain_psnr", "B_brain_psnr", "B_tumor_psnr", "A_brain_ssim", "B_brain_ssim"):
        seen = {final[name][key] for name in final if key in final[name]}
        assert len(seen) == 1, (key, seen)


def test_every_paper_value_has_a_column_and_every_mapped_row_exists():
    for table in paper.TABLES:
        reported = {k for row in paper.PAPER_VALUES.get(table.name, {}).values() for k in row}
        assert reported == set(paper.paper_keys(table)), table.name
    for name, rows in paper.PAPER_ROWS.items():
        assert set(rows.values()) | {paper.PAPER_FINAL_ROW[name]} <= set(paper.PAPER_VALUES[name])


# ---------------------------------------------------------------- outputs


def test_write_paper_outputs_writes_every_table_and_figure(tmp_path):
    written = paper_report.write_paper_outputs(make_per_subject(), make_catalog(), tmp_path)
    assert set(written) == {"table1", "table2", "table3", "table5", "floors", "paper_tables",
                            "fig7_loss_weights", "fig9_delta", "fig10_missing_inputs"}
    table3 = pd.read_csv(written["table3"], sep="\t")
    assert table3["model"].tolist() == ["t1", "t1t2", "final"]
    markdown = written["paper_tables"].read_text()
    for text in ("## Table I:", "## Table V:", "## Floors", "26.86±1.05", "Ref [21]",
                 "![Fig. 7", "(fig9_delta.png)"):
        assert text in markdown
    assert "## Not run" not in markdown
    assert read_png(written["fig7_loss_weights"]).shape == (500, 640, 4)
    assert read_png(written["fig9_delta"]).shape == (400, 1000, 4)
    # 5 groups: zero-T2w, cascade-adc, T1w, T1w+T2w, final -> 1.3 * 5 + 2 = 8.5 in wide
    assert read_png(written["fig10_missing_inputs"]).shape == (450, 850, 4)


def test_p_values_in_the_markdown_are_the_tables():
    tables = {s.name: paper.build_table(make_per_subject(), make_catalog(), s)
              for s in paper.TABLES}
    p = tables["table1"].loc[0, "A_brain_psnr_p"]
    assert tables["table1"]["A_brain_psnr_n_pairs"].tolist()[0] == len(SET_A)
    cell = f"{p:.1e}" if p < 0.001 else f"{p:.3f}"
    line = next(li for li in paper_report.paper_markdown(tables, "final").splitlines()
                if li.startswith("| unet2d |"))
    assert f"{cell} ({len(SET_A)})" in line


def seeded_inputs() -> tuple[pd.DataFrame, pd.DataFrame]:
    """final and unet2d with seeds 0-2 (the first seed keeps the name), and the T1 floor."""
    models = ("final", "unet2d", "floor-t1")
    catalog = make_catalog(models).assign(configuration=list(models))
    seeds = [{**row, "model": f"{row['model']}-seed{seed}", "experiment":
              f"{row['experiment']}-seed{seed}", "seed": seed, "reference": False}
             for row in catalog.to_dict("records")[:2] for seed in (1, 2)]
    catalog = pd.concat([catalog, pd.DataFrame(seeds)], ignore_index=True)
    return make_per_subject(tuple(catalog["model"])), catalog


def test_a_configurations_seeds_are_one_row_tested_on_seed_averaged_patients(tmp_path):
    per_subject, catalog = seeded_inputs()
    written = paper_report.write_paper_outputs(per_subject, catalog, tmp_path)
    assert set(written) == {"table1", "table2", "floors", "paper_tables"}
    table = paper.build_table(per_subject, catalog, spec("table1"))
    assert table["model"].tolist() == ["unet2d", "final"]  # seeds are no rows of their own
    assert table["seeds"].tolist() == [3, 3]
    a = per_subject[per_subject["set"] == "A"]
    seeds_of = {m: m.split("-seed")[0] for m in catalog["model"]}
    a = a.assign(configuration=a["model"].map(seeds_of))
    averaged = a.groupby(["configuration", "subject"])["brain_psnr"].mean()
    per_seed = a.groupby(["configuration", "model"])["brain_psnr"].mean()
    row = table.iloc[0]
    assert row["A_brain_psnr_mean"] == pytest.approx(averaged["unet2d"].mean())
    assert row["A_brain_psnr_sd"] == pytest.approx(averaged["unet2d"].std(ddof=1))
    assert row["A_brain_psnr_seed_sd"] == pytest.approx(per_seed["unet2d"].std(ddof=1))
    expected = stats.ttest_rel(averaged["unet2d"], averaged["final"])
    assert row["A_brain_psnr_p"] == pytest.approx(expected.pvalue)
    assert row["A_brain_psnr_p_holm"] == pytest.approx(expected.pvalue)  # one test
    assert row["holm_family"] == "table1: 1 tests"
    markdown = paper_report.paper_markdown({"table1": table}, "final")
    assert "| p Holm |" in markdown and "Holm family: table1: 1 tests" in markdown
    assert f"(±{row['A_brain_psnr_seed_sd']:.2f})" in markdown


def test_tests_of_one_table_are_holm_adjusted_together_and_few_pairs_are_descriptive():
    per_subject, catalog = make_per_subject(), make_catalog()
    table = paper.build_table(per_subject, catalog, spec("table3"))  # 2 rows x 2 tests
    raw = table[["A_brain_psnr_p", "B_tumor_psnr_p"]].to_numpy(float).ravel()
    adjusted = table[["A_brain_psnr_p_holm", "B_tumor_psnr_p_holm"]].to_numpy(float).ravel()
    assert adjusted[~np.isnan(raw)] == pytest.approx(holm(raw)[~np.isnan(raw)])
    assert table["holm_family"].iloc[0] == "table3: 4 tests"
    few = per_subject[~per_subject["subject"].isin(["a0", "a1"])]  # 3 Set A patients
    table = paper.build_table(few, catalog, spec("table1"))
    row = table.iloc[0]
    assert row["A_brain_psnr_test"] == "descriptive" and math.isnan(row["A_brain_psnr_p"])
    assert math.isfinite(row["A_brain_psnr_mean_difference"])
    line = next(li for li in paper_report.paper_markdown({"table1": table}, "final")
                .splitlines() if li.startswith("| unet2d |"))
    assert "descriptive (3)" in line and "One seed per configuration" in (
        paper_report.paper_markdown({"table1": table}, "final"))


def test_a_seed_without_its_first_seeds_row_is_refused():
    per_subject, catalog = seeded_inputs()
    catalog = catalog[catalog["model"] != "unet2d"]
    with pytest.raises(InputError, match="without a row of their own"):
        paper.build_table(per_subject, catalog, spec("table1"))


def test_outputs_from_the_rules_inputs_equal_those_from_frames(tmp_path):
    """The rule reads metrics.tsv as text (io.read_tsv) and gets the catalog as dicts."""
    models = ("final", "unet2d", "floor-t1")
    per_subject = make_per_subject(models)
    write_tsv(per_subject, tmp_path / "metrics.tsv")
    catalog = make_catalog(models).astype(object)
    records = catalog.where(catalog.notna(), None).to_dict("records")
    assert records[-1]["l1"] is None
    from_rule = paper.build_table(read_tsv(tmp_path / "metrics.tsv"), pd.DataFrame(records),
                                  spec("floors"))
    direct = paper.build_table(per_subject, make_catalog(models), spec("floors"))
    pd.testing.assert_frame_equal(from_rule, direct)
    written = paper_report.write_paper_outputs(read_tsv(tmp_path / "metrics.tsv"),
                                        pd.DataFrame(records), tmp_path / "out")
    assert set(written) == {"table1", "table2", "floors", "paper_tables"}


def test_an_exact_prediction_is_left_out_of_the_paired_test():
    table = hand_table([11.0, 12.0, 13.0, math.inf], [10.0, 10.0, 10.0, 10.0])
    effect = paper.paired_effect(table, "A_brain_psnr", "m", "final")
    assert effect["n"] == 3 and effect["cohen_dz"] == pytest.approx(2.0)


def test_tables_without_rows_are_skipped_and_named(tmp_path):
    (tmp_path / "table3.tsv").write_text("stale\n")
    (tmp_path / "fig7_loss_weights.png").write_bytes(b"stale")
    models = ("final", "unet2d")
    written = paper_report.write_paper_outputs(make_per_subject(models), make_catalog(models),
                                               tmp_path)
    assert set(written) == {"table1", "table2", "paper_tables"}
    assert not (tmp_path / "table3.tsv").exists()
    assert not (tmp_path / "fig7_loss_weights.png").exists()
    not_run = written["paper_tables"].read_text().split("## Not run", 1)[1]
    for title in ("Table III", "Table V", "Floors"):
        assert title in not_run
    assert "Table I:" not in not_run
    assert "Fig. 7" in written["paper_tables"].read_text().split("## Figures", 1)[1]


def test_missing_input_groups_in_the_papers_order():
    rows = paper_figures._missing_input_rows(paper.check_catalog(make_catalog()))
    assert rows["model"].tolist() == ["final-zero-T2w", "final-cascade-adc", "t1", "t1t2",
                                      "final"]


def test_figures_are_not_drawn_without_scores(tmp_path):
    models = ("final", "lw-1-1")
    per_subject = make_per_subject(models)
    per_subject = per_subject[per_subject["set"] == "A"]  # no tumor PSNR anywhere
    assert paper_figures.plot_loss_weights(per_subject, make_catalog(models),
                                           tmp_path / "f.png") is None
    assert not (tmp_path / "f.png").exists()


# ---------------------------------------------------------------- Fig. 4-like panel


def test_synthesis_panel_draws_a_row_per_subject(tmp_path):
    rng = np.random.default_rng(1)
    volume = lambda: rng.uniform(0, 1, (12, 10, 5)).astype(np.float32)  # noqa: E731
    truth_path = tmp_path / "truth.nii.gz"
    nib.save(nib.Nifti1Image(volume(), np.eye(4)), truth_path)
    images = {
        "sub-01": {"T1w": volume(), "T2w": volume(), "adc": volume(), "truth": truth_path,
                   "U-Net 3D": volume(), "HR-FCN 3D": volume()},
        "sub-02": {"T1w": volume(), "adc": volume(), "truth": volume(),  # no T2w
                   "U-Net 3D": volume(), "HR-FCN 3D": volume()},
    }
    out = paper_figures.synthesis_panel(images, {"sub-01": 2, "sub-02": 4}, tmp_path / "panel.png")
    # 8 columns (3 inputs, truth, 2 models, 2 error maps) x 2.2 in; 2 rows x 2.4 in + 0.4 in
    assert read_png(out).shape == (520, 1760, 4)


def test_synthesis_panel_rejects_a_slice_outside_the_volume(tmp_path):
    volume = np.zeros((6, 6, 3), np.float32)
    with pytest.raises(InputError, match="slice 3"):
        paper_figures.synthesis_panel({"sub-01": {"truth": volume, "m": volume}}, 3,
                                      tmp_path / "p.png")
    with pytest.raises(InputError, match="truth"):
        paper_figures.synthesis_panel({"sub-01": {"m": volume}}, 1, tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


def test_the_panel_cuts_through_the_largest_part_of_a_region():
    mask = np.zeros((6, 5, 7), dtype=np.uint8)
    mask[1:3, 1:3, 2] = 1
    mask[1:4, 1:4, 5] = 1
    assert paper_figures.largest_region_slice(mask) == 5
    assert paper_figures.largest_region_slice(np.zeros((4, 4, 9))) == 4
