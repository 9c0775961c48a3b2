"""The model card of a released model version: one Markdown page a reader can check.

:func:`write_model_card` writes it from the workflow's own files, the release rule logs it to
the release run (:data:`MODEL_CARD_ARTIFACT`, beside the model and checkpoint) and keeps it under
``results/release/``. Sections: the release (registered version, checkpoint, gate), intended use,
the statement that the output is synthetic and not for diagnosis, the training data (subjects
and scans per set and split, from ``ingest/sets.tsv``), the preprocessing record stored in the
checkpoint (every key, printed as it is), the evaluation (mean ± sd and n per set, region and
metric, from ``eval/summary.tsv``, then the enhancement, lesion and BraSyn endpoints with their
bootstrap intervals), the release gate's decision and the known limitations.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats

import cesynth
from cesynth.evaluate import METRICS, REGIONS
from cesynth.evaluation_tables import ENDPOINT_TABLE, format_interval, format_mean_sd
from cesynth.io import InputError, atomic_path, read_tsv

MODEL_CARD_ARTIFACT = "model_card.md"
"""The card's name among the release run's artifacts."""

_ROLES = {
    ("A", "train"): "training",
    ("A", "validation"): "checkpoint selection and the release gate only, never reported",
    ("A", "test"): "reported (Set A test)",
    ("B", "test"): "reported (Set B, expert tumor masks)",
}
_METRIC_HEADERS = {"mae": "MAE", "psnr": "PSNR (dB)", "ssim": "SSIM"}
_DIGITS = {"mae": 3, "psnr": 2, "ssim": 3}
_SCANNER_COLUMNS = ("scanner", "manufacturer", "manufacturersmodelname", "station")


def write_model_card(out_path: str | os.PathLike, *, release: Mapping[str, Any],
                     experiment: str, checkpoint: str | os.PathLike,
                     sets: str | os.PathLike, summary: str | os.PathLike | None,
                     gate: Mapping[str, Any], evaluated_checkpoint: str = "final",
                     date: datetime.date | None = None) -> Path:
    """Write the model card of one released version (Markdown, written atomically).

    Args:
        out_path: the card's path.
        release: :func:`cesynth.release.register_release`'s record (``name``, ``version``,
            ``model_uri``, ``run_id``, ``checkpoint_sha256``, ``cascade``).
        experiment: the experiment (the model's name in ``summary``).
        checkpoint: the released checkpoint; its ``settings`` and ``preprocessing`` are read.
        sets: the workflow's sets table (``ingest/sets.tsv``).
        summary: the evaluation summary (``eval/summary.tsv``); None when nothing was evaluated.
        gate: the release gate's decision (:meth:`cesynth.release_gate.GateDecision.to_dict`).
        evaluated_checkpoint: which checkpoint was evaluated and released (final or best).
        date: the release date; default today (UTC).

    Returns:
        ``out_path``.

    Raises:
        InputError: an unreadable checkpoint, sets table or summary.
    """
    from cesynth.checkpoint import read_checkpoint

    state = read_checkpoint(Path(checkpoint))
    text = model_card(
        release=release, experiment=experiment, settings=state.get("settings") or {},
        preprocessing=state.get("preprocessing") or {}, sets=_read_table(sets),
        summary=_read_summary(summary, experiment) if summary else None, gate=gate,
        evaluated_checkpoint=evaluated_checkpoint,
        date=date or datetime.datetime.now(datetime.UTC).date())
    with atomic_path(out_path) as tmp:
        tmp.write_text(text)
    return Path(out_path)


def log_model_card(card: str | os.PathLike) -> None:
    """Log the card to the active MLflow run as :data:`MODEL_CARD_ARTIFACT`."""
    import mlflow

    mlflow.log_text(Path(card).read_text(), MODEL_CARD_ARTIFACT)


def model_card(*, release: Mapping[str, Any], experiment: str, settings: Mapping[str, Any],
               preprocessing: Mapping[str, Any], sets: pd.DataFrame,
               summary: pd.DataFrame | None, gate: Mapping[str, Any],
               evaluated_checkpoint: str, date: datetime.date) -> str:
    """The card's Markdown text from the pieces :func:`write_model_card` reads.

    Args:
        release: the registered version's record.
        experiment: the experiment name.
        settings: the checkpoint's training settings.
        preprocessing: the checkpoint's preprocessing record, printed key by key.
        sets: the sets table (``set``, ``split``, ``participant``, ``scan_id``...).
        summary: this model's rows of ``summary.tsv``; None or empty: not evaluated.
        gate: the gate decision as a mapping.
        evaluated_checkpoint: final or best.
        date: the release date.

    Returns:
        The Markdown text, ending with a newline.
    """
    name, version = release["name"], release["version"]
    parts = [
        f"# Model card: {name}, version {version}\n",
        _release_section(release, experiment, settings, gate, evaluated_checkpoint, date),
        _intended_use(settings),
        "## Synthetic images, not for diagnosis\n\n"
        "Every image this model produces is **synthetic**: it is computed from pre-contrast "
        "scans, not acquired after a contrast agent was given. It is **not for diagnosis** and "
        "must not replace a contrast-enhanced acquisition. `cesynth predict` marks its output "
        "as synthetic in the NIfTI header and the JSON sidecar.\n",
        _training_data(sets),
        _preprocessing(preprocessing),
        _evaluation(summary),
        _gate_section(gate),
        _limitations(sets, settings, preprocessing),
    ]
    return "\n".join(parts).rstrip("\n") + "\n"


# ---------------------------------------------------------------- sections


def _release_section(release: Mapping[str, Any], experiment: str, settings: Mapping[str, Any],
                     gate: Mapping[str, Any], evaluated_checkpoint: str,
                     date: datetime.date) -> str:
    champion = "yes (alias `champion`)" if gate.get("passed") else "no (the champion is unchanged)"
    rows = [
        ("registered model", f"`{release['name']}` version {release['version']}"),
        ("model URI", f"`{release.get('model_uri', '')}`"),
        ("champion", champion),
        ("experiment", f"`{experiment}`"),
        ("released on", date.isoformat()),
        ("MLflow run", f"`{release.get('run_id', '')}`"),
        ("checkpoint", f"{evaluated_checkpoint} "
                       f"(SHA-256 `{release.get('checkpoint_sha256', '')}`)"),
        ("architecture", _cell(settings.get("model", "unknown"))),
        ("inputs", _cell(", ".join(settings.get("modalities") or ()) or "unknown")),
        ("output", _cell(settings.get("target", "ceT1w"))),
        ("cascade models", _cell(", ".join(release.get("cascade") or {}) or "none")),
        ("cesynth", cesynth.__version__),
    ]
    return "## Release\n\n" + _table(("item", "value"), rows)


def _intended_use(settings: Mapping[str, Any]) -> str:
    inputs = ", ".join(settings.get("modalities") or ("T1w", "T2w", "adc"))
    return (
        "## Intended use\n\n"
        f"Research on contrast-enhanced T1 synthesis: a synthetic post-contrast (gadolinium) T1 "
        f"of the adult brain from pre-contrast {inputs} of one session, prepared exactly as the "
        "preprocessing record below says (`cesynth predict` applies it). Suited to method "
        "development, to studying what contrast adds, and to triage research in which a "
        "qualified reader compares the output with acquired images. Not intended for clinical "
        "decisions, for patients unlike the training cohort, or as a substitute for giving "
        "contrast.\n")


def _training_data(sets: pd.DataFrame) -> str:
    rows = []
    order = {"train": 0, "validation": 1, "test": 2}
    groups = sorted(sets.groupby(["set", "split"]),
                    key=lambda item: (item[0][0], order.get(item[0][1], 3), item[0][1]))
    for (set_name, split), group in groups:
        participants = group["participant"].nunique() if "participant" in group else len(group)
        rows.append((set_name, split, str(participants), str(len(group)),
                     _ROLES.get((set_name, split), "")))
    text = ("## Training data\n\nSubjects (participants) and scans per set and split, from the "
            "workflow's sets table (`ingest/sets.tsv`). The model is trained on Set A `train` "
            "only; nothing of `test` or Set B is seen before evaluation.\n\n"
            + _table(("set", "split", "subjects", "scans", "role"), rows))
    missing = [f"{int((~_truthy(sets[c])).sum())} without {c[len('has_'):]}"
               for c in sets.columns if c.startswith("has_") and c != "has_tumor_mask"
               and (~_truthy(sets[c])).any()]
    if missing:
        text += "\nScans lacking an input (filled as the missing-input rule says): " \
                + ", ".join(missing) + ".\n"
    scanner = next((c for c in sets.columns if c.lower() in _SCANNER_COLUMNS), None)
    if scanner is None:
        text += "\nScanners: not recorded in the sets table.\n"
    else:
        counts = sets[scanner].fillna("unknown").value_counts().sort_index()
        text += "\nScanners (scans): " + ", ".join(f"{k} ({v})" for k, v in counts.items()) + ".\n"
    return text


def _preprocessing(preprocessing: Mapping[str, Any]) -> str:
    head = ("## Preprocessing\n\nThe preprocessing record stored in the checkpoint: how the "
            "training inputs were made, and what `cesynth predict` applies to a new patient.\n\n")
    rows = list(_flatten(preprocessing))
    if not rows:
        return head + "No preprocessing record in the checkpoint.\n"
    return head + _table(("setting", "value"), [(f"`{k}`", _cell(v)) for k, v in rows])


def _evaluation(summary: pd.DataFrame | None) -> str:
    head = "## Evaluation\n\n"
    if summary is None or summary.empty:
        return head + "Not evaluated: the run had no reported subjects (Set A test, Set B).\n"
    text = head + ("Against the acquired CE-T1 on the model grid (`eval/summary.tsv`): mean ± sd "
                   "over the n reported subjects of each set, with the 95% confidence interval "
                   "of the mean in brackets (Student's t with n - 1 degrees of freedom; sd and "
                   "interval left out for n = 1). Set A is its test split only. With a handful "
                   "of subjects the intervals are wide: read them before comparing models.\n\n")
    rows = []
    for record in summary.to_dict("records"):
        for region in REGIONS:
            values = [_mean_sd(record, region, metric) for metric in METRICS]
            if all(v == "n/a" for v in values):
                continue
            label = "A (test)" if record["set"] == "A" else str(record["set"])
            rows.append((label, region, str(int(record["n"])), *values))
    headers = ("set", "region", "n", *(_METRIC_HEADERS[m] for m in METRICS))
    return text + _table(headers, rows) + _endpoints(summary)


def _endpoints(summary: pd.DataFrame) -> str:
    """The enhancement, lesion and BraSyn endpoints per set: mean ± sd [bootstrap interval]."""
    rows = []
    for record in summary.to_dict("records"):
        label = "A (test)" if record["set"] == "A" else str(record["set"])
        for column, heading, digits in ENDPOINT_TABLE:
            mean = _number(record.get(f"{column}_mean"))
            if math.isnan(mean):
                continue
            rows.append((label, heading, str(int(record["n"])), format_interval(
                mean, _number(record.get(f"{column}_sd")),
                _number(record.get(f"{column}_ci_low")),
                _number(record.get(f"{column}_ci_high")), digits)))
    if not rows:
        return ""
    return ("\nWhat a reader needs (README, \"Endpoints a radiologist needs\"): voxel-wise "
            "enhancement detection against the true enhancement (CE-T1 - T1 > delta) at a "
            "threshold chosen on the validation split, enhancing lesions found by size, "
            "false-positive enhancing components per patient and the BraSyn SSIM; mean ± sd "
            "over subjects with a seeded 95% bootstrap interval of the mean in brackets.\n\n"
            + _table(("set", "endpoint", "n", "mean ± sd [95% bootstrap]"), rows))


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _gate_section(gate: Mapping[str, Any]) -> str:
    outcome = "passed" if gate.get("passed") else "failed"
    before = gate.get("champion_version")
    rows = [
        ("outcome", f"**{outcome}**"),
        ("reason", _cell(gate.get("reason", ""))),
        ("validation brain PSNR of the released weights", _decibels(gate.get("score"))),
        ("floor", f"{gate.get('min_val_brain_psnr')} dB"),
        ("champion's validation brain PSNR", _decibels(gate.get("champion_score"))),
        ("tolerance against the champion", f"{gate.get('tolerance_db')} dB"),
        ("champion before this release", f"version {before}" if before is not None else "none"),
    ]
    return ("## Release gate\n\nThe registry alias `champion` moves to a new version only when "
            "the validation brain PSNR of its weights reaches the floor and is not worse than "
            "the current champion's beyond the tolerance (`release.gates`). Promoting a version "
            "is a selection, so the gate reads the validation split only; the reported scores "
            "above play no part in it.\n\n" + _table(("item", "value"), rows))


def _decibels(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.2f} dB"


def _limitations(sets: pd.DataFrame, settings: Mapping[str, Any],
                 preprocessing: Mapping[str, Any]) -> str:
    train = sets[(sets["set"] == "A") & (sets["split"] == "train")]
    n_train = train["participant"].nunique() if "participant" in train else len(train)
    grid = preprocessing.get("model_grid")
    grid_text = f" ({' x '.join(str(n) for n in grid)} voxels)" if grid else ""
    items = [
        f"Trained on the given cohort only ({n_train} Set A training subjects); scanners, "
        "protocols, field strengths, ages and pathologies outside it are untested and may fail "
        "silently.",
        f"Small lesions: the model works on the model grid{grid_text}, so enhancing lesions of a "
        "few voxels there are blurred or missed; a missing enhancement on a synthetic image "
        "does not rule out a lesion.",
        "Enhancement is learned from the training cases: the model can miss it or put it where "
        "there is none (false enhancement), and whole-brain fidelity trades off against "
        "enhancement (the local loss).",
        "A missing input (T2w or ADC) is filled by a cascade model or zeros, a missing FLAIR by "
        "zeros; the output is then worse than with all inputs.",
        "The inputs must be prepared as the preprocessing record says; other brain masks, "
        "normalisations or grids change the output.",
        "The reported scores rest on few test subjects: read their intervals before comparing "
        "models.",
    ]
    return "## Known limitations\n\n" + "".join(f"- {item}\n" for item in items)


# ---------------------------------------------------------------- helpers


def _read_table(path: str | os.PathLike) -> pd.DataFrame:
    try:
        table = read_tsv(path)
    except FileNotFoundError as err:
        raise InputError(path, "file not found") from err
    missing = {"set", "split"} - set(table.columns)
    if missing:
        raise InputError(path, f"sets table without column(s) {', '.join(sorted(missing))}")
    return table


def _read_summary(path: str | os.PathLike, experiment: str) -> pd.DataFrame:
    try:
        summary = pd.read_csv(path, sep="\t", na_values=["n/a"], dtype={"model": str,
                                                                        "set": str})
    except FileNotFoundError as err:
        raise InputError(path, "file not found") from err
    if not {"set", "model", "n"} <= set(summary.columns):
        raise InputError(path, "not an evaluation summary (no set, model and n columns)")
    return summary[summary["model"] == experiment].reset_index(drop=True)


def _mean_sd(record: Mapping[str, Any], region: str, metric: str) -> str:
    mean = record.get(f"{region}_{metric}_mean")
    sd = record.get(f"{region}_{metric}_sd")
    mean = math.nan if mean is None else float(mean)
    sd = math.nan if sd is None else float(sd)
    if math.isinf(mean):
        return "inf"
    text = format_mean_sd(mean, sd, _DIGITS[metric])
    n = int(record.get("n", 0) or 0)
    if n < 2 or not math.isfinite(sd):
        return text
    low, high = mean_confidence_interval(mean, sd, n)
    return f"{text} [{low:.{_DIGITS[metric]}f}, {high:.{_DIGITS[metric]}f}]"


def mean_confidence_interval(mean: float, sd: float, n: int,
                             level: float = 0.95) -> tuple[float, float]:
    """The t-based confidence interval of a mean from its sample sd over ``n`` >= 2 values."""
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def _truthy(column: pd.Series) -> pd.Series:
    return column.astype(str).str.lower().isin(("true", "1", "yes"))


def _flatten(record: Mapping[str, Any], prefix: str = "") -> Sequence[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows += _flatten(value, f"{name}.")
        else:
            rows.append((name, value))
    return rows


def _cell(value: Any) -> str:
    """A value as one Markdown table cell (JSON for lists and mappings, ``|`` escaped)."""
    if isinstance(value, str):
        text = value
    elif value is None:
        text = "none"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, (list, tuple, Mapping)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    return " ".join(text.split()).replace("|", "\\|")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


__all__ = ["MODEL_CARD_ARTIFACT", "log_model_card", "model_card", "write_model_card"]
