"""The ``cesynth`` command line: each pipeline stage runnable alone, as the rules run it.

Every error is one line, ``error: <subject or file>: <what is wrong>``, with a non-zero exit; the
library functions write atomically, so nothing partial is left at an output path. Numbers out of
range are refused by the parser (exit 2); output paths that cannot be written, or that would
write over an input, before any work (exit 1). A SIGTERM ends the command with exit 143 after
the temporary files of unfinished writes are removed; an unexpected failure is one line too
(``-v`` shows its traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from cesynth import __version__
from cesynth.io import InputError, check_writable_folder, one_line_error
from cesynth.signals import Terminated, sigterm_raises


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cesynth`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        with sigterm_raises(keep_existing=True):
            result = args.handler(args)
    except InputError as err:
        print(f"error: {err.who}: {err.problem}", file=sys.stderr)
        return 1
    except Terminated as err:
        print(f"error: cesynth {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return int(err.code)
    except Exception as err:
        if args.verbose:
            raise
        print(f"error: cesynth {args.command}: {one_line_error(err)} (-v shows the traceback)",
              file=sys.stderr)
        return 1
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cesynth", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cesynth {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (adder, handler) in COMMANDS.items():
        sub = commands.add_parser(name, help=handler.__doc__.splitlines()[0])
        _one_line_errors(sub)
        adder(sub)
        sub.set_defaults(handler=handler)
    return parser


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``low`` (else a one-line usage error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {low}")
        return value

    return parse


def _number_in(low: float, high: float, *, low_open: bool = False,
               high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a number in the range ``low``..``high`` (ends open as asked)."""
    shown = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if below or above or value != value:
            raise argparse.ArgumentTypeError(f"{value:g} is outside {shown}")
        return value

    return parse


SEED = _int_at_least(0)
THREADS = _int_at_least(1)


def _add_phantom(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="BIDS dataset folder to create")
    parser.add_argument("--subjects", required=True, type=_int_at_least(1),
                        help="number of subjects")
    parser.add_argument("--seed", type=SEED, default=0)
    parser.add_argument("--set-b", type=_int_at_least(0), default=None,
                        help="subjects in Set B (with tumor masks); default a quarter")
    parser.add_argument("--voxel-mm", type=_number_in(0.4, 6.0, low_open=True), default=2.0,
                        help="voxel size of the anatomy and CE-T1 grids (1.0: full resolution; "
                             "above 0.4, at most 6)")
    parser.add_argument("--layout", choices=("bids", "ucsf-pdgm", "brats"), default="bids",
                        help="bids (default): the demo cohort; ucsf-pdgm or brats: the cohort "
                             "in that published layout (co-registered, skull-stripped, ADC "
                             "map, tumor label map), the input of `cesynth import`")
    parser.add_argument("--flair", action="store_true",
                        help="bids layout: also write each subject's FLAIR (inversion recovery, "
                             "CSF nulled; the other images are the same with or without it). "
                             "The published layouts always have one")


def run_phantom(args: argparse.Namespace) -> dict:
    """Write the synthetic demo cohort as a BIDS dataset."""
    from cesynth import phantom

    if args.set_b is not None and args.set_b > args.subjects:
        raise InputError("--set-b", f"{args.set_b} Set B subjects of {args.subjects}")
    _check_output_folder(args.out)
    if args.layout != "bids":
        from cesynth.phantom import layouts

        folders = layouts.write_layout_cohort(
            args.out, args.layout, args.subjects, seed=args.seed,
            settings=phantom.PhantomSettings(voxel_mm=args.voxel_mm))
        return {"layout": args.layout, "dir": str(args.out),
                "cases": [folder.name for folder in folders]}
    phantom.guard_demo_target(args.out)
    plan = phantom.make_cohort(args.out, args.subjects, seed=args.seed, n_set_b=args.set_b,
                               settings=phantom.PhantomSettings(voxel_mm=args.voxel_mm),
                               flair=args.flair)
    return {"bids_dir": str(args.out), "subjects": plan["participant_id"].tolist(),
            "set": plan["set"].tolist()}


def _add_validate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bids", required=True, type=Path, help="BIDS dataset to check")
    parser.add_argument("--out", type=Path, help="write the per-subject table here (TSV)")
    parser.add_argument("--validation-fraction", type=_number_in(0, 1, high_open=True),
                        default=0.1,
                        help="share of Set A participants for validation (selection)")
    parser.add_argument("--test-fraction", type=_number_in(0, 1, high_open=True), default=0.2,
                        help="share of Set A participants reported as test set A")


def run_validate(args: argparse.Namespace) -> dict:
    """Check every subject of a BIDS dataset as the pipeline's ingest does."""
    from cesynth import ingest_report, splits

    try:
        fractions = splits.SplitFractions(args.validation_fraction, args.test_fraction)
    except ValueError as err:
        raise InputError("--validation-fraction/--test-fraction", str(err)) from err
    table = ingest_report.validate_dataset(args.bids, fractions, out_tsv=args.out)
    excluded = table[table["status"] == "excluded"]
    for reason in excluded["reason"]:
        print(f"error: {reason}", file=sys.stderr)
    summary = table["status"].value_counts().to_dict()
    if not excluded.empty:
        raise InputError(args.bids, f"{len(excluded)} of {len(table)} subjects excluded")
    return summary


def _add_dicom2bids(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dicom", required=True, type=Path,
                        help="folder with one sub-folder of DICOM series per subject")
    parser.add_argument("--out", required=True, type=Path, help="BIDS dataset to write")
    parser.add_argument("--keep-going", action="store_true",
                        help="report a failing subject and convert the others (exit 1 at the "
                             "end); without it a failing subject stops the conversion and "
                             "nothing is written")
    parser.add_argument("--prefer", choices=("3d", "2d"), default="3d",
                        help="which acquisition wins between candidates of one role "
                             "(default 3d; config ingest.dicom_prefer)")
    parser.add_argument("--series", action="append", default=[], metavar="[SUBJECT:]ROLE=N",
                        help="pin a series to a role where the rules cannot settle it: ROLE "
                             "one of T1w, ceT1w, T2w, FLAIR, DWI, ADC; N a SeriesNumber, a "
                             "SeriesInstanceUID or 'none'; SUBJECT may be left out when "
                             "--dicom holds one subject (repeatable)")


def series_overrides(entries: list[str], labels: list[str]) -> dict[str, dict[str, str]]:
    """``--series [SUBJECT:]ROLE=N`` entries as subject -> role -> value.

    Raises:
        InputError: a malformed entry, or one without a subject when there are several.
    """
    overrides: dict[str, dict[str, str]] = {}
    for entry in entries:
        match = re.fullmatch(r"(?:(?:sub-)?([A-Za-z0-9]+):)?([A-Za-z0-9]+)=(\S+)", entry)
        if match is None:
            raise InputError("--series", f"{entry!r} is not [SUBJECT:]ROLE=SeriesNumber")
        subject, role, value = match.groups()
        if subject is None:
            if len(labels) != 1:
                raise InputError("--series", f"{entry!r} names no subject and --dicom holds "
                                             f"{len(labels)}; write SUBJECT:{entry}")
            subject = labels[0]
        overrides.setdefault(subject, {})[role] = value
    return overrides


def run_dicom2bids(args: argparse.Namespace) -> dict:
    """Convert DICOM series (one folder per subject) to the BIDS layout, anonymised; each
    series' role is decided from its tags and recorded in
    ``<out>/derivatives/cesynth-dicom/sub-<label>_series.tsv``."""
    from cesynth import dicom
    from cesynth.ingest import list_dicom_subjects

    def report(err: InputError) -> None:
        print(f"error: {err.who}: {err.problem}", file=sys.stderr)

    def summary(line: str) -> None:
        print(line, file=sys.stderr)

    overrides = series_overrides(args.series, list_dicom_subjects(args.dicom))
    options = dicom.RoleOptions(prefer=args.prefer, overrides=overrides)
    result = dicom.convert_dicom_dataset(args.dicom, args.out, keep_going=args.keep_going,
                                         on_error=report, options=options, on_subject=summary)
    if result["skipped"]:
        print(json.dumps(result, indent=2, default=str))
        n_subjects = len(result["skipped"]) + len(result["converted"])
        raise InputError(args.dicom, f"{len(result['skipped'])} of {n_subjects} subjects "
                                     "skipped")
    return result["converted"]


def _add_import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", required=True, choices=("ucsf-pdgm", "brats"),
                        help="the published cohort's folder layout")
    parser.add_argument("dir", type=Path, metavar="DIR",
                        help="the cohort's folder (one sub-folder per case); only read")
    parser.add_argument("--out", required=True, type=Path, help="BIDS dataset to write")
    parser.add_argument("--tumor-labels", default="enhancing", metavar="LABELS",
                        help="segmentation labels of the binary tumor mask: enhancing "
                             "(default), core (enhancing + necrotic), whole (+ edema), or "
                             "label numbers such as 1,4")
    parser.add_argument("--set", default="auto", choices=("auto", "A", "B"), dest="set_mode",
                        help="auto (default): Set B when the case has a tumor mask")
    parser.add_argument("--pattern", action="append", default=[], metavar="KEY=GLOB",
                        help="override a file-name pattern (keys T1w, ceT1w, T2w, adc, md, "
                             "seg; glob without extension, e.g. T1w='*_T1_bias')")
    parser.add_argument("--keep-going", action="store_true",
                        help="report a bad case and import the others (exit 1 at the end)")


def run_import(args: argparse.Namespace) -> dict:
    """Import a published cohort's layout (UCSF-PDGM, BraTS) into the BIDS layout."""
    from cesynth import importing

    patterns = {}
    for item in args.pattern:
        key, sep, glob = item.partition("=")
        if not sep or not glob:
            raise InputError("--pattern", f"{item!r}: expected KEY=GLOB")
        patterns[key] = glob

    def report(err: InputError) -> None:
        print(f"error: {err.who}: {err.problem}", file=sys.stderr)

    _check_output_folder(args.out)
    result = importing.import_layout(
        args.dir, args.out, args.layout, patterns=patterns, tumor_labels=args.tumor_labels,
        set_mode=args.set_mode, keep_going=args.keep_going, on_error=report)
    summary = importing.import_report(result)
    if result["skipped"]:
        print(json.dumps(summary, indent=2, default=str))
        n_cases = len(result["skipped"]) + len(result["imported"])
        raise InputError(args.dir, f"{len(result['skipped'])} of {n_cases} cases skipped")
    return summary


def _add_adc(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dwi", required=True, type=Path)
    parser.add_argument("--bval", required=True, type=Path)
    parser.add_argument("--bvec", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--mask", type=Path, help="fit only inside this mask (DWI grid)")


def run_adc(args: argparse.Namespace) -> dict:
    """Fit the ADC map (mm2/s) from DWI at b = 0, 500, 1000."""
    from dataclasses import asdict

    from cesynth import adc

    stats = adc.fit_adc_file(args.dwi, args.bval, args.bvec, args.out, mask_path=args.mask)
    return asdict(stats)


def _add_brainmask(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", required=True, type=Path, help="CE-T1 (or any T1w) image")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--method", default="auto",
                        choices=("auto", "fsl", "deepbet", "bet-python", "nonzero"),
                        help="nonzero: the nonzero region of an already skull-stripped image")
    parser.add_argument("--threads", type=THREADS, default=1)


def run_brainmask(args: argparse.Namespace) -> dict:
    """Brain mask of an image (FSL BET, deepbet or the Python BET port)."""
    from cesynth import brainmask

    return brainmask.brain_mask_file(args.image, args.out, args.method, threads=args.threads)


def _add_register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fixed", required=True, type=Path, help="reference (the CE-T1)")
    parser.add_argument("--moving", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="moving image on the fixed grid")
    parser.add_argument("--xfm", required=True, type=Path, help="ANTs transform (.mat)")
    parser.add_argument("--threads", type=THREADS, default=1)
    parser.add_argument("--seed", type=SEED, default=0)


def run_register(args: argparse.Namespace) -> dict:
    """Register an image to the reference (rigid then affine, mutual information)."""
    from dataclasses import asdict

    from cesynth import registration

    result = registration.register_to_reference(args.fixed, args.moving, args.out, args.xfm,
                                                threads=args.threads, seed=args.seed)
    return asdict(result)


def _add_metrics(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, type=Path, help="synthetic CE-T1 (model grid)")
    parser.add_argument("--target", required=True, type=Path, help="real CE-T1, same grid")
    parser.add_argument("--mask", required=True, type=Path, help="brain mask, same grid")
    parser.add_argument("--tumor-mask", type=Path, help="tumor mask, same grid (Set B)")


def run_metrics(args: argparse.Namespace) -> dict:
    """MAE, PSNR and slice SSIM of a synthetic CE-T1 in the brain (and tumor), as JSON."""
    import numpy as np

    from cesynth import evaluate
    from cesynth.io import check_binary_mask, load_nifti

    for mask in (args.mask, args.tumor_mask):
        if mask is not None:
            check_binary_mask(np.asanyarray(load_nifti(mask).dataobj), mask)
    return evaluate.evaluate_files(args.pred, args.target, args.mask, args.tumor_mask)


def _add_predict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--t1", required=True, type=Path,
                        help="pre-contrast T1 (reference space); each image input is a NIfTI "
                             "file or a folder holding one DICOM series")
    parser.add_argument("--t2", type=Path,
                        help="T2 (missing: synthesized by the model's T1->T2 cascade if it has "
                             "one, else zero-filled)")
    diffusion = parser.add_mutually_exclusive_group()
    diffusion.add_argument("--adc", type=Path,
                           help="ADC (or MD) map, any grid; unit detected from its median: "
                                "mm2/s, 1e-3 mm2/s, 1e-6 mm2/s (scanner) or m2/s")
    diffusion.add_argument("--dwi", type=Path, help="4D DWI at b = 0, 500, 1000 (needs --bval, "
                                                    "--bvec); without --adc or --dwi: the "
                                                    "T1->ADC cascade, else zero-filled")
    parser.add_argument("--bval", type=Path, help="FSL .bval of --dwi")
    parser.add_argument("--bvec", type=Path, help="FSL .bvec of --dwi")
    parser.add_argument("--flair", type=Path,
                        help="FLAIR, for a model that takes it (missing: zero-filled)")
    parser.add_argument("--model", required=True, metavar="URI_OR_PATH",
                        help="checkpoint file, runs:/<run_id> or models:/<name>/<version|alias>")
    parser.add_argument("--out", required=True, type=Path,
                        help="synthetic CE-T1 on the T1 grid (.nii.gz); sidecar <stem>.json")
    parser.add_argument("--out-model-grid", type=Path, help="also write the model-grid image")
    parser.add_argument("--out-dicom", type=Path, metavar="DIR",
                        help="also write the synthetic image as a DICOM series into DIR (absent "
                             "or empty), marked synthetic, without patient identity")
    parser.add_argument("--dicom-study-from-t1", action="store_true",
                        help="file the --out-dicom series with the T1 series' study: copy the "
                             "patient and study attributes a PACS needs (DICOM files only)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--threads", type=THREADS, default=1)
    parser.add_argument("--seed", type=SEED,
                        help="registration seed (default: the model's; another is recorded in "
                             "the sidecar as an override)")
    parser.add_argument("--brainmask-method",
                        choices=("auto", "fsl", "deepbet", "bet-python", "nonzero"),
                        help="default: the method the model was trained with (which must be "
                             "installed here); another is recorded in the sidecar as an "
                             "override; nonzero: the scans are skull-stripped, their nonzero "
                             "region is the brain (needed for a model trained on a dataset "
                             "declared skull-stripped)")
    parser.add_argument("--model-grid", type=_int_at_least(8), nargs=3, metavar=("X", "Y", "Z"),
                        help="default: the checkpoint's (needed for checkpoints without it)")
    parser.add_argument("--normalise", choices=("histeq", "percentile"),
                        help="default: the checkpoint's (needed for checkpoints without it)")
    parser.add_argument("--keep-work", type=Path, metavar="DIR",
                        help="keep the intermediate files in DIR, which may not lie in a "
                             "folder holding an input or the model (default: a removed temp "
                             "folder)")
    parser.add_argument("--cascade-t2", type=Path, metavar="F",
                        help="T1->T2 cascade checkpoint for a missing T2 (default: the model's)")
    parser.add_argument("--cascade-adc", type=Path, metavar="F",
                        help="T1->ADC cascade checkpoint for a missing ADC (default: the model's)")
    parser.add_argument("--no-cascade", action="store_true",
                        help="fill missing inputs with zeros even if cascade models exist")
    parser.add_argument("--coregistered", action="store_true",
                        help="the inputs are already aligned on the T1's grid (a published "
                             "cohort such as BraTS): checked and copied, not registered")


def run_predict(args: argparse.Namespace) -> dict:
    """Synthesize a new patient's CE-T1 from raw T1, T2, ADC or DWI and FLAIR (preprocessing
    included)."""
    import torch

    from cesynth import predict

    torch.set_num_threads(max(1, args.threads))
    return predict.predict_patient(
        args.t1, args.t2, args.adc, args.dwi, args.bval, args.bvec, model=args.model,
        out=args.out, out_model_grid=args.out_model_grid, out_dicom=args.out_dicom,
        dicom_study_from_t1=args.dicom_study_from_t1,
        brainmask_method=args.brainmask_method,
        model_grid=tuple(args.model_grid) if args.model_grid else None,
        normalise=args.normalise, threads=args.threads, device=args.device, seed=args.seed,
        work_dir=args.keep_work, cascade={"T2w": args.cascade_t2, "adc": args.cascade_adc},
        use_cascade=not args.no_cascade, flair=args.flair, coregistered=args.coregistered)


def _add_results_folder(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="the pipeline's results folder (default: results)")


def _results_folder(args: argparse.Namespace) -> Path:
    if not args.results.is_dir():
        raise InputError(args.results, "no such results folder")
    return args.results


def _add_status(parser: argparse.ArgumentParser) -> None:
    _add_results_folder(parser)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 (with a one-line error) when any stage of any scan failed")


def run_status(args: argparse.Namespace) -> None:
    """Every scan x stage as done, failed (reason, log) or not run; writes qc/status.tsv."""
    from cesynth import status

    table = status.status_table(_results_folder(args))
    if table.empty:
        raise InputError(args.results, "no scans found (no qc/ingest reports, "
                                       "ingest/sets.tsv or qc/status.tsv)")
    print(status.format_report(table))
    print(f"\nwrote {status.write_table(table, args.results)}")
    failed = int((table["state"] == status.FAILED).sum())
    if args.check and failed:
        raise InputError(args.results, f"{failed} of {len(table)} scan stages failed")


def _add_send_runs(parser: argparse.ArgumentParser) -> None:
    _add_results_folder(parser)
    parser.add_argument("--end-running", action="store_true",
                        help="no job runs any more: send runs still RUNNING as KILLED")


def run_send_runs(args: argparse.Namespace) -> dict:
    """Send the MLflow runs short jobs spooled under RESULTS/mlflow-spool to their stores."""
    from cesynth import run_spool

    spool = run_spool.spool_dir(_results_folder(args))
    sent = run_spool.send_spool(spool, end_running="all" if args.end_running else "none")
    return {"sent": sent, "left": run_spool.spooled_count(spool)}


def _check_output_folder(path: Path) -> None:
    """Fail before any work when a folder output is a file or cannot be created or written."""
    if path.is_file():
        raise InputError(path, "output is a file; give a folder")
    check_writable_folder(path / "dataset_description.json")


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` report usage errors as ``error: <command>: <what>`` (exit 2)."""
    def error(message: str) -> NoReturn:
        parser.exit(2, f"error: {parser.prog}: {message}\n")

    parser.error = error


COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "phantom": (_add_phantom, run_phantom),
    "validate": (_add_validate, run_validate),
    "dicom2bids": (_add_dicom2bids, run_dicom2bids),
    "import": (_add_import, run_import),
    "adc": (_add_adc, run_adc),
    "brainmask": (_add_brainmask, run_brainmask),
    "register": (_add_register, run_register),
    "metrics": (_add_metrics, run_metrics),
    "predict": (_add_predict, run_predict),
    "status": (_add_status, run_status),
    "send-runs": (_add_send_runs, run_send_runs),
}


if __name__ == "__main__":
    sys.exit(main())
