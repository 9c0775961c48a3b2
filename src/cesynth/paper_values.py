"""The paper's own numbers (its non-public UCLA data), as printed in its tables.

Data only, no imports of the project, so the evaluation tables and the paper's tables both show
them beside ours without importing each other.
"""

from __future__ import annotations

PaperValue = tuple[float, float]
"""A paper cell: (mean, sd)."""

# Metric keys are "<set>_<region>_<metric>": "A_brain_psnr" is Set A's brain PSNR.
PAPER_VALUES: dict[str, dict[str, dict[str, PaperValue]]] = {
    # Paper Table I: test set A, whole-brain region; MAE, PSNR (dB), SSIM. Ref [21]'s MAE is
    # printed "N/A" and left out.
    "table1": {
        "Ref [21]": {"A_brain_psnr": (22.97, 1.16), "A_brain_ssim": (0.872, 0.031)},
        "U-Net (2D)": {"A_brain_mae": (0.033, 0.005), "A_brain_psnr": (26.86, 1.05),
                       "A_brain_ssim": (0.905, 0.038)},
        "U-Net (3D)": {"A_brain_mae": (0.032, 0.004), "A_brain_psnr": (27.21, 1.18),
                       "A_brain_ssim": (0.908, 0.038)},
        "Ours (2D)": {"A_brain_mae": (0.030, 0.005), "A_brain_psnr": (27.87, 1.30),
                      "A_brain_ssim": (0.915, 0.039)},
        "Ours (3D)": {"A_brain_mae": (0.029, 0.005), "A_brain_psnr": (28.24, 1.26),
                      "A_brain_ssim": (0.923, 0.041)},
    },
    # Paper Table II: test set B. Its header (extracted text: "PSNR SSIM / Brain Tumor Brain")
    # is read as three columns: brain PSNR, tumor PSNR, brain SSIM; no MAE and no tumor SSIM.
    # Ambiguous: Ref [21]'s brain values repeat its Table I (set A) values exactly; the paper
    # prints them so. Rows are spelled "UNet" here, as the paper does in this table.
    "table2": {
        "Ref [21]": {"B_brain_psnr": (22.97, 1.16), "B_tumor_psnr": (20.15, 4.70),
                     "B_brain_ssim": (0.872, 0.031)},
        "UNet (2D)": {"B_brain_psnr": (26.44, 1.40), "B_tumor_psnr": (18.45, 2.22),
                      "B_brain_ssim": (0.896, 0.022)},
        "UNet (3D)": {"B_brain_psnr": (26.79, 1.26), "B_tumor_psnr": (18.89, 2.38),
                      "B_brain_ssim": (0.899, 0.022)},
        "Ours (2D)": {"B_brain_psnr": (27.22, 1.21), "B_tumor_psnr": (19.64, 2.59),
                      "B_brain_ssim": (0.903, 0.023)},
        "Ours (3D)": {"B_brain_psnr": (27.62, 1.34), "B_tumor_psnr": (21.2, 2.36),
                      "B_brain_ssim": (0.909, 0.023)},
    },
    # Paper Table III: input modalities; A-brain PSNR and SSIM, B-brain PSNR and SSIM, B-tumor
    # PSNR. The extracted text prints the last B-tumor cell as "21.242.36"; read as 21.2±2.36,
    # the same model's value in Table II.
    "table3": {
        "T1": {"A_brain_psnr": (27.4, 1.28), "A_brain_ssim": (0.914, 0.040),
               "B_brain_psnr": (26.7, 1.23), "B_brain_ssim": (0.898, 0.022),
               "B_tumor_psnr": (19.8, 2.32)},
        "T1+T2": {"A_brain_psnr": (27.9, 1.24), "A_brain_ssim": (0.920, 0.040),
                  "B_brain_psnr": (27.3, 1.27), "B_brain_ssim": (0.905, 0.023),
                  "B_tumor_psnr": (20.8, 2.30)},
        "T1+T2+ADC": {"A_brain_psnr": (28.24, 1.26), "A_brain_ssim": (0.923, 0.041),
                      "B_brain_psnr": (27.62, 1.34), "B_brain_ssim": (0.909, 0.023),
                      "B_tumor_psnr": (21.2, 2.36)},
    },
    # Paper Table V: ablations (Model-A..D against the final model). Ambiguous: (1) in the
    # extracted text this table has no "TABLE V" label (the state-of-the-art table is labelled
    # IV, while the text calls both "Table V"); it is the table captioned "comparison between
    # the final model and four degraded model architectures". (2) Its metric is not named; the
    # columns A-Brain, B-Brain, B-Tumor are read as PSNR (dB), since the final model's row equals
    # its PSNR in Tables I and II. "27.26x1.28" and "27.20£1.22" are read with "±".
    "table5": {
        "Model-A": {"A_brain_psnr": (27.68, 1.31), "B_brain_psnr": (27.26, 1.28),
                    "B_tumor_psnr": (20.63, 2.46)},
        "Model-B": {"A_brain_psnr": (26.42, 1.12), "B_brain_psnr": (26.32, 1.20),
                    "B_tumor_psnr": (19.54, 2.38)},
        "Model-C": {"A_brain_psnr": (27.20, 1.22), "B_brain_psnr": (27.04, 1.19),
                    "B_tumor_psnr": (20.39, 2.44)},
        "Model-D": {"A_brain_psnr": (27.36, 1.20), "B_brain_psnr": (27.08, 1.18),
                    "B_tumor_psnr": (20.68, 2.32)},
        "Final-Model": {"A_brain_psnr": (28.24, 1.26), "B_brain_psnr": (27.62, 1.34),
                        "B_tumor_psnr": (21.20, 2.36)},
    },
}
"""The paper's values (mean, sd) on its UCLA data, per table, paper row and metric key."""

PAPER_ROWS: dict[str, dict[str, str]] = {
    "table1": {"unet2d": "U-Net (2D)", "unet3d": "U-Net (3D)", "hrfcn2d": "Ours (2D)",
               "hrfcn3d": "Ours (3D)"},
    "table2": {"unet2d": "UNet (2D)", "unet3d": "UNet (3D)", "hrfcn2d": "Ours (2D)",
               "hrfcn3d": "Ours (3D)"},
    "table3": {"t1w": "T1", "t1w+t2w": "T1+T2", "adc+t1w+t2w": "T1+T2+ADC"},
    "table5": {"model_a": "Model-A", "model_b": "Model-B", "model_c": "Model-C",
               "model_d": "Model-D"},
}
"""Paper row of a catalog value of the table's varied column (modalities: lower-case, sorted)."""
PAPER_FINAL_ROW = {"table1": "Ours (3D)", "table2": "Ours (3D)", "table3": "T1+T2+ADC",
                   "table5": "Final-Model"}
"""Paper row of the reference (the final model) per table."""


def final_model_values() -> dict[tuple[str, str], float]:
    """The paper's final model (3D HR-FCN): mean per (set, metric), from Tables I and II."""
    values = {}
    for table in ("table1", "table2"):
        for key, (mean, _sd) in PAPER_VALUES[table][PAPER_FINAL_ROW[table]].items():
            set_name, metric = key.split("_", 1)
            values[(set_name, metric)] = mean
    return values


__all__ = ["PAPER_FINAL_ROW", "PAPER_ROWS", "PAPER_VALUES", "PaperValue", "final_model_values"]
