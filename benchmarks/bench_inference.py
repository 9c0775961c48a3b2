"""Benchmark whole-volume synthesis (cesynth.inference.predict_volume) on the demo and paper grids.

Run by hand (not a test)::

    python benchmarks/bench_inference.py [--profiles demo paper] [--device cpu|cuda]
        [--stride 1] [--bf16] [--channels-last] [--compile] [--max-windows N]

Each profile runs in its own subprocess with an untrained generator of the profile's size
(the weights do not change the arithmetic) on random inputs of the model grid: 3 inputs,
3-slice windows at ``--stride``, batches of 3 windows, as `cesynth predict` and the evaluation
run it. One warm-up window batch, then the volume is timed (CUDA synchronised). On CPU the paper
grid takes minutes per window batch; ``--max-windows`` times only the first N windows, and the
row then says how many of the volume's windows were timed (the whole-volume figure is that
time scaled to every window, marked as such). Prints Markdown rows with the machine and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from machine import describe_cpu  # benchmarks/machine.py (scripts run from their folder)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

PROFILES = {
    # name: (width_multiplier, blocks_per_module, model grid (slices, rows, cols))
    "demo": (0.125, 1, (64, 64, 80)),
    "paper": (1.0, 4, (192, 256, 192)),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", choices=sorted(PROFILES), default=["demo"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="hrfcn3d")
    parser.add_argument("--stride", type=int, default=1, choices=[1, 3])
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--max-windows", type=int, default=None)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one profile, print JSON
    return parser.parse_args()


def measure(profile: str, args: argparse.Namespace) -> dict:
    import torch

    from cesynth.inference import predict_volume, window_starts
    from cesynth.models import build_model, channels_last_format

    width, blocks, (slices, rows, cols) = PROFILES[profile]
    torch.manual_seed(0)
    model = build_model(args.model, 3, width_multiplier=width, blocks_per_module=blocks)
    model = model.to(args.device).eval()
    if args.channels_last:
        model = model.to(memory_format=channels_last_format(model))
    if args.compile:
        model = torch.compile(model)
    windows = len(window_starts(slices, stride=args.stride))
    timed_slices = slices
    if args.max_windows and args.max_windows < windows:
        timed_slices = (args.max_windows - 1) * args.stride + 3
    volume = torch.rand(3, timed_slices, rows, cols, device=args.device)
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16)

    def synthesize(inputs: torch.Tensor) -> None:
        with autocast:
            predict_volume(model, inputs, stride=args.stride)
        if args.device == "cuda":
            torch.cuda.synchronize()

    synthesize(volume[:, :3])  # warm-up (and compilation)
    started = time.perf_counter()
    synthesize(volume)
    seconds = time.perf_counter() - started
    timed = len(window_starts(timed_slices, stride=args.stride))
    result = {"seconds": seconds, "timed_windows": timed, "windows": windows,
              "threads": torch.get_num_threads(),
              "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if args.device == "cuda":
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu"] = torch.cuda.get_device_name()
    return result


def main() -> None:
    args = parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return
    options = [flag for flag, on in (("bf16", args.bf16), ("channels-last", args.channels_last),
                                     ("compile", args.compile)) if on]
    print("| machine | date | device | profile | grid | stride | windows timed | seconds "
          "timed | seconds per volume | peak RSS (MB) | peak GPU (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for profile in args.profiles:
        command = [sys.executable, __file__, "--one", profile, *sys.argv[1:]]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        row = json.loads(output.strip().splitlines()[-1])
        per_volume = row["seconds"] * row["windows"] / row["timed_windows"]
        scaled = "" if row["timed_windows"] == row["windows"] else " (scaled)"
        grid = "x".join(map(str, PROFILES[profile][2]))
        device = " ".join([args.device, *options])
        machine = f"{row['gpu']} ({describe_cpu()})" if "gpu" in row else describe_cpu()
        gpu_mb = f"{row['gpu_peak_mb']:.0f}" if "gpu_peak_mb" in row else "-"
        print(f"| {machine} | {datetime.date.today()} | {device} | {profile} | {grid} | "
              f"{args.stride} | {row['timed_windows']}/{row['windows']} | {row['seconds']:.1f} | "
              f"{per_volume:.1f}{scaled} | {row['maxrss_mb']:.0f} | {gpu_mb} |", flush=True)


if __name__ == "__main__":
    main()
