"""Model size, FLOPs and CPU training speed of the registry's CNNs and CIFAR ResNets.

For each model: parameters, forward FLOPs per 32×32 image (torch.utils.flop_counter, 1 multiply-add = 2 FLOPs;
a training step costs about 3× this), and training images/s for batch 256 at 32×32 (forward + backward + SGD
step, train mode) in fp32, under bf16 autocast, and under bf16 autocast with channels_last model and input.

    .venv/bin/python benchmarks/model_speed.py --threads 1   # all models, about 4 minutes
    .venv/bin/python benchmarks/model_speed.py --models cnn-m resnet20 --min-time 2 --results-name model_speed_few

Writes benchmarks/results/model_speed.json and .md. Needs nothing outside the repository (random data).
The committed results use --threads 1 because the 2-core machine was shared with other jobs: there, two threads
spend most of a bf16 step in oneDNN's AMX weight-gradient kernel (most likely its 2-thread reduction waiting
for a descheduled thread), which made bf16 look no faster than fp32; with one thread the ranking is stable.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fewlabels.models import create_model

MODELS = ["cnn-tiny", "cnn-s", "cnn-m", "cnn-l", "cnn-xl", "resnet20", "resnet56"]
MODES = {  # name → (autocast dtype or None, channels_last)
    "fp32": (None, False),
    "bf16": (torch.bfloat16, False),
    "bf16_cl": (torch.bfloat16, True),
}
RESULTS = Path(__file__).resolve().parent / "results"


def forward_flops(model: torch.nn.Module, size: int = 32) -> int:
    """Forward FLOPs for one image, counted in eval mode (BN folded away from the count either way)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops()


def train_speed(name: str, mode: str, batch_size: int, warmup: int, min_steps: int, min_time: float) -> dict:
    """Images/s of forward + backward + SGD step: the best and the median of at least `min_steps` timed steps
    (and `min_time` seconds). On a shared machine the best step is the closest to the uncontended speed."""
    dtype, channels_last = MODES[mode]
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).train()
    x = torch.randn(batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (batch_size,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def step() -> float:
        start = time.perf_counter()
        ctx = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
        with ctx:
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    for _ in range(warmup):
        step()
    times: list[float] = []
    while len(times) < min_steps or sum(times) < min_time:
        times.append(step())
    return {"best": batch_size / min(times), "median": batch_size / statistics.median(times), "steps": len(times)}


def table(rows: list[dict]) -> str:
    head = ("| model | params | GFLOPs/img (fwd, 32×32) | fp32 img/s | bf16 img/s | bf16 + channels_last img/s |\n"
            "|---|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        speed = r["train_images_per_s"]
        cells = [f"{speed[m]['best']:.0f} ({speed[m]['median']:.0f})" for m in MODES]
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['flops_per_image'] / 1e9:.3f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nimg/s: best step (median step), batch 256, forward + backward + SGD step."


def contention_note(data: dict) -> str:
    """A warning when other jobs shared the CPU: the speeds are then lower and noisier than on an idle machine."""
    load = max(data["load_average_before"][0], data["load_average_after"][0])
    cores = os.cpu_count() or 1
    if load <= cores:
        return ""
    return (f"\n\nOther jobs shared the CPU during this run (1-minute load average up to {load:.1f} on {cores} cores): "
            f"these speeds are lower and noisier than on an idle machine; compare rows with each other.\n")


def write(data: dict, table_md: str, name: str = "model_speed") -> None:
    """Through benchmarks/_common.py when the project has it, else JSON + Markdown with the same metadata."""
    try:
        from _common import machine_info, write_results  # benchmarks/ is sys.path[0] when run as a script
    except ImportError:
        from fewlabels.utils import environment_info, write_json

        data = {"name": name, **environment_info(), **data}
        RESULTS.mkdir(parents=True, exist_ok=True)
        write_json(RESULTS / f"{name}.json", data)
        meta = (f"{data['date']}, {data['cpu']} ({data['cores']} cores, {data['config']['threads']} torch threads), "
                f"torch {data['torch']}, commit {data['git_commit'][:10]}, load average "
                f"{data['load_average_before'][0]:.1f} before / {data['load_average_after'][0]:.1f} after")
        (RESULTS / f"{name}.md").write_text(f"# Model speed\n\n`{data['command']}`\n\n{meta}\n\n{table_md}\n")
        return
    write_results(name, {**data, "machine": machine_info()}, table_md)


def main() -> None:
    try:
        from _common import results_name  # a plain file name, checked before anything is timed
    except ImportError:  # the script copied out of the project
        results_name = str
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--min-steps", type=int, default=2)
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds of timed steps per model and mode")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--results-name", type=results_name, default="model_speed",
                        help="results file name (another name keeps the all-models table when timing a few)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    rows = []
    for name in args.models:
        model = create_model(name, num_classes=10)
        row = {"model": name, "params": sum(p.numel() for p in model.parameters()),
               "flops_per_image": forward_flops(model), "train_images_per_s": {}}
        for mode in MODES:
            row["train_images_per_s"][mode] = train_speed(name, mode, args.batch_size, args.warmup, args.min_steps,
                                                          args.min_time)
        print(f"{name:9s} {row['params'] / 1e6:6.2f} M  {row['flops_per_image'] / 1e9:6.3f} GFLOP  "
              + "  ".join(f"{m} {v['best']:7.1f} img/s" for m, v in row["train_images_per_s"].items()), flush=True)
        rows.append(row)
    data = {"command": "python benchmarks/model_speed.py " + shlex.join(sys.argv[1:]),
            "config": {"batch_size": args.batch_size, "image_size": 32, "warmup": args.warmup,
                       "min_steps": args.min_steps, "min_time_s": args.min_time, "threads": torch.get_num_threads(),
                       "step": "forward + cross-entropy + backward + SGD(nesterov) step, train mode"},
            # Load averages (1, 5, 15 min) show whether other jobs shared the CPU during the run.
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "results": rows}
    table_md = table(rows) + contention_note(data)
    write(data, table_md, args.results_name)
    print(table_md)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
