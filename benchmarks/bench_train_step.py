"""Benchmark one training step (forward, loss, backward, Adam; batch 3) and its peak memory.

Run by hand (not a test)::

    python benchmarks/bench_train_step.py [--profiles demo paper] [--steps 3] [--device cpu]

Each profile runs in its own subprocess, so the peak resident memory (``ru_maxrss``) is that of
the profile alone (it includes about 0.5 GB of Python and torch). On CUDA the peak allocated GPU
memory is reported as well. Prints Markdown rows with the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import subprocess
import sys
import time

from machine import describe_cpu  # benchmarks/machine.py (scripts run from their folder)

PROFILES = {
    # name: (width_multiplier, blocks_per_module, (slices, rows, cols))
    "demo": (0.125, 1, (3, 64, 80)),
    "paper": (1.0, 4, (3, 256, 192)),
}
BATCH = 3


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", choices=sorted(PROFILES), default=["demo"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA)")
    parser.add_argument("--model", default="hrfcn3d")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one profile, print JSON
    return parser.parse_args()


def measure(profile: str, model_name: str, device: str, steps: int, bf16: bool) -> dict:
    """Time ``steps`` training steps of one profile after a warm-up step.

    Returns:
        Median and min seconds per step, parameter count and peak memory.
    """
    import torch

    from cesynth.losses import LossWeights, SynthesisLoss
    from cesynth.models import build_model, count_parameters

    width, blocks, (slices, rows, cols) = PROFILES[profile]
    torch.manual_seed(0)
    model = build_model(model_name, 3, width_multiplier=width, blocks_per_module=blocks).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = SynthesisLoss(LossWeights())
    inputs = torch.rand(BATCH, 3, slices, rows, cols, device=device)
    target = torch.rand(BATCH, 1, slices, rows, cols, device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and device == "cuda"):
            prediction = model(inputs)
        total, _ = loss_fn(prediction.float(), target, inputs)
        total.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    step()
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    result = {"profile": profile, "params": count_parameters(model),
              "median_s": seconds[len(seconds) // 2], "min_s": seconds[0],
              "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "threads": torch.get_num_threads()}
    if device == "cuda":
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu"] = torch.cuda.get_device_name()
    return result


def machine(device: str, gpu: str | None) -> str:
    """A short machine description."""
    text = describe_cpu()
    return f"{gpu} ({text})" if device == "cuda" and gpu else text


def main() -> None:
    """Run each profile in a subprocess and print the Markdown table."""
    args = parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.model, args.device, args.steps, args.bf16)))
        return
    date = datetime.date.today().isoformat()
    print("| machine | date | device | profile | model | params | step (s), median | "
          "step (s), min | peak RSS (MB) | peak GPU (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for profile in args.profiles:
        command = [sys.executable, __file__, "--one", profile, "--steps", str(args.steps),
                   "--device", args.device, "--model", args.model] + (["--bf16"] * args.bf16)
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        row = json.loads(output.strip().splitlines()[-1])
        width, blocks, grid = PROFILES[profile]
        label = f"{profile} (w {width}, {blocks} blk, {'x'.join(map(str, grid))})"
        gpu_mb = f"{row['gpu_peak_mb']:.0f}" if "gpu_peak_mb" in row else "-"
        device = args.device + (" bf16" if args.bf16 else "")
        print(f"| {machine(args.device, row.get('gpu'))} | {date} | {device} | {label} | "
              f"{args.model} | {row['params']:,} | {row['median_s']:.3f} | {row['min_s']:.3f} | "
              f"{row['maxrss_mb']:.0f} | {gpu_mb} |", flush=True)


if __name__ == "__main__":
    main()
