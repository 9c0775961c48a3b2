"""Reports of the ingest stage: the JSON report of one validated (or excluded) scan, and the
tables gathered from them (``results/qc/ingest.tsv``, ``results/ingest/sets.tsv``, and the
``cesynth validate`` table).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cesynth.ingest import MODALITIES, ScanFiles, discover_bids
from cesynth.io import (
    InputError,
    check_output_file,
    check_outputs,
    one_line_error,
    read_json,
    write_json,
    write_tsv,
)
from cesynth.splits import SplitFractions, scan_split
from cesynth.validation import validate_scan

# the default of every function here; frozen, so one shared instance is safe (ruff B008
# cannot see that an imported dataclass is frozen)
_DEFAULT_FRACTIONS = SplitFractions()


def write_scan_report(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a scan's validation report as JSON (atomically).

    Args:
        report: from :func:`~cesynth.validation.validate_scan` or :func:`exclusion_report`.
        path: output JSON path.
    """
    write_json(report, path)


def exclusion_report(scan: ScanFiles, error: InputError) -> dict[str, Any]:
    """Build the report of a scan that failed validation.

    Args:
        scan: the scan's files.
        error: the validation error.

    Returns:
        A report with status ``"excluded"`` and the one-line error message as reason.
    """
    return {
        "scan_id": scan.scan_id, "participant": scan.participant, "session": scan.session,
        "set": scan.set, "status": "excluded", "reason": str(error),
        "modalities": list(scan.available_modalities()),
        "missing": list(scan.missing_modalities()),
    }


def validate_and_report(scan: ScanFiles, report_path: str | os.PathLike,
                        **validation_options: Any) -> dict[str, Any]:
    """Validate a scan and write its report, included or excluded (the rule's work).

    Args:
        scan: the scan's files.
        report_path: output JSON path.
        **validation_options: passed to :func:`~cesynth.validation.validate_scan` (b_values,
            b_tolerance, require_target).

    Returns:
        The report of an included scan, written at ``report_path``.

    Raises:
        InputError: the scan is invalid. Its report (status ``"excluded"`` and the reason) is
            written at :func:`excluded_report_path` instead: a workflow deletes the outputs of
            a failed job, and the ingest table must still list the scan with its reason.
    """
    excluded_path = excluded_report_path(report_path)
    try:
        report = validate_scan(scan, **validation_options)
    except InputError as err:
        write_scan_report(exclusion_report(scan, err), excluded_path)
        raise
    write_scan_report(report, report_path)
    excluded_path.unlink(missing_ok=True)
    return report


def excluded_report_path(report_path: str | os.PathLike) -> Path:
    """Where the report of an excluded scan goes: ``sub-07.json`` -> ``sub-07.excluded.json``."""
    path = Path(report_path)
    return path.with_name(path.name.removesuffix(".json") + ".excluded.json")


def validate_dataset(bids_dir: str | os.PathLike, fractions: SplitFractions = _DEFAULT_FRACTIONS,
                     out_tsv: str | os.PathLike | None = None,
                     **validation_options: Any) -> pd.DataFrame:
    """Discover and validate every scan of a dataset (the ``cesynth validate`` command).

    Args:
        bids_dir: the dataset root.
        fractions: the held-out shares of Set A participants.
        out_tsv: where to write the table (optional, atomic).
        **validation_options: passed to :func:`~cesynth.validation.validate_scan`.

    Returns:
        The table of :func:`tabulate_reports`, one row per scan; a subject folder that cannot
        even be listed is a row of its own, excluded with the reason.

    Raises:
        InputError: ``out_tsv`` lies inside the dataset, is a folder, cannot be written or does
            not end in ``.tsv`` (checked before any work); the dataset cannot be listed.
    """
    if out_tsv is not None:
        check_outputs([out_tsv], sources=[bids_dir])
        check_output_file(out_tsv, (".tsv",))
    reports = []

    def unlisted(folder: Path, err: InputError) -> None:
        label = folder.name.removeprefix("sub-")
        reports.append({"scan_id": label, "participant": label, "session": None, "set": None,
                        "status": "excluded", "reason": str(err)})

    for scan in discover_bids(bids_dir, on_error=unlisted):
        try:
            reports.append(validate_scan(scan, **validation_options))
        except InputError as err:
            reports.append(exclusion_report(scan, err))
        except Exception as err:  # an unforeseen failure stays this subject's row
            reports.append(exclusion_report(scan, InputError(f"sub-{scan.scan_id}",
                                                             one_line_error(err))))
    table = _reports_table(reports, fractions)
    if out_tsv is not None:
        write_tsv(table, out_tsv)
    return table


def tabulate_reports(
    report_paths: Iterable[str | os.PathLike],
    out_tsv: str | os.PathLike,
    fractions: SplitFractions = _DEFAULT_FRACTIONS,
) -> pd.DataFrame:
    """Gather per-scan reports into the ingest QC table (``results/qc/ingest.tsv``).

    Args:
        report_paths: JSON reports written by :func:`write_scan_report`.
        out_tsv: output TSV path (written atomically).
        fractions: the held-out shares of Set A participants (for the split column).

    Returns:
        One row per scan: scan_id, participant, session, set, split (empty when excluded),
        status, reason, modalities, missing.
    """
    table = _reports_table([read_json(path) for path in report_paths], fractions)
    write_tsv(table, out_tsv)
    return table


def write_sets_table(report_paths: Iterable[str | os.PathLike], out_tsv: str | os.PathLike,
                     fractions: SplitFractions = _DEFAULT_FRACTIONS) -> pd.DataFrame:
    """Write the split of the included scans (``results/ingest/sets.tsv``).

    Args:
        report_paths: JSON reports written by :func:`write_scan_report`.
        out_tsv: output TSV path (written atomically).
        fractions: the held-out shares of Set A participants.

    Returns:
        One row per included scan: scan_id, participant, session, set, split, has_T1w,
        has_ceT1w, has_T2w, has_dwi, has_tumor_mask.
    """
    rows = []
    for report in map(read_json, report_paths):
        if report["status"] != "included":
            continue
        row = {key: report.get(key) for key in ("scan_id", "participant", "session", "set")}
        row["split"] = scan_split(report["set"], report["participant"], fractions)
        row.update({f"has_{name}": name in report["modalities"] for name in MODALITIES})
        row["has_tumor_mask"] = "tumor_mask" in report.get("files", {})
        rows.append(row)
    columns = ["scan_id", "participant", "session", "set", "split",
               *(f"has_{name}" for name in MODALITIES), "has_tumor_mask"]
    table = pd.DataFrame(rows, columns=columns).sort_values("scan_id", kind="stable")
    table = table.reset_index(drop=True)
    write_tsv(table, out_tsv)
    return table


def _reports_table(reports: Iterable[Mapping[str, Any]],
                   fractions: SplitFractions) -> pd.DataFrame:
    rows = []
    for report in reports:
        included = report["status"] == "included"
        rows.append({
            "scan_id": report["scan_id"], "participant": report["participant"],
            "session": report.get("session"), "set": report["set"],
            "split": (scan_split(report["set"], report["participant"], fractions)
                      if included else None),
            "status": report["status"], "reason": report.get("reason"),
            "modalities": ",".join(report.get("modalities", [])),
            "missing": ",".join(report.get("missing", [])),
        })
    columns = ["scan_id", "participant", "session", "set", "split", "status", "reason",
               "modalities", "missing"]
    table = pd.DataFrame(rows, columns=columns).sort_values("scan_id", kind="stable")
    return table.reset_index(drop=True)
