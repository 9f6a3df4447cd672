"""glibc malloc tuning (fewlabels.utils.tune_cpu_allocator) on vs off, for a CPU training step and the strong
augmentation at 224 px.

Each measurement runs in a fresh process (the allocator setting is process-wide and cannot be undone), with
FEWLABELS_MALLOC_TUNING=1 and =0 alternating, `--rounds` times each. Reported per workload: median images/s by
wall clock and by this process's CPU time (user + system; page faults are system time), and their ratios.

    .venv/bin/python benchmarks/cpu_allocator.py [--rounds 5] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

WORKLOADS = ("train_step", "augment_224")


def worker(workload: str, steps: int) -> dict:
    import torch
    import torch.nn.functional as F

    from fewlabels.augment import build_augment
    from fewlabels.augment.ops import normalize
    from fewlabels.models import create_model
    from fewlabels.utils import tune_cpu_allocator

    tuned = tune_cpu_allocator()  # honours FEWLABELS_MALLOC_TUNING
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    if workload == "train_step":  # cnn-s, batch 512 of 32 px, weak augmentation, bf16 autocast, channels_last
        model = create_model("cnn-s", num_classes=10).to(memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        data = torch.randint(0, 256, (4096, 3, 32, 32), dtype=torch.uint8)
        y = torch.randint(0, 10, (512,))
        aug = build_augment("weak", image_size=32, padding=2)
        batch = 512

        def step(i: int) -> None:
            x = normalize(aug(data[(i % 8) * 512 : (i % 8 + 1) * 512], generator=g), mean, std)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", torch.bfloat16):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:  # the strong preset + normalise on a batch of 64 images of 224 px, one thread
        torch.set_num_threads(1)
        data = torch.randint(0, 256, (128, 3, 224, 224), dtype=torch.uint8)
        aug = build_augment("strong", image_size=224)
        batch = 64

        def step(i: int) -> None:
            aug.normalized(data[(i % 2) * 64 : (i % 2 + 1) * 64], mean, std, generator=g)

    for i in range(3):  # warm-up
        step(i)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(steps):
        step(i)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"tuned": tuned, "wall_images_per_s": steps * batch / wall, "cpu_images_per_s": steps * batch / cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="one short round; writes nothing")
    ap.add_argument("--worker", choices=WORKLOADS, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=20, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.steps)))
        return
    rounds, steps = (1, 2) if a.smoke else (a.rounds, a.steps)
    runs: dict[str, dict[str, list[dict]]] = {w: {"on": [], "off": []} for w in WORKLOADS}
    for r in range(rounds):
        for w in WORKLOADS:
            for setting in (("on", "off") if r % 2 == 0 else ("off", "on")):
                env = {**os.environ, "FEWLABELS_MALLOC_TUNING": "1" if setting == "on" else "0"}
                out = subprocess.run([sys.executable, __file__, "--worker", w, "--steps", str(steps)], env=env,
                                     check=True, capture_output=True, text=True).stdout
                res = json.loads(out.strip().splitlines()[-1])
                if res["tuned"] != (setting == "on"):
                    sys.exit(f"the allocator setting did not take effect ({setting}): {res}")
                runs[w][setting].append(res)
                print(w, setting, {k: round(v, 1) for k, v in res.items() if k != "tuned"}, flush=True)
    if a.smoke:
        return
    from _common import machine_info, write_results

    summary = {}
    for w in WORKLOADS:
        med = {s: {k: statistics.median(r[k] for r in runs[w][s]) for k in ("wall_images_per_s", "cpu_images_per_s")}
               for s in ("on", "off")}
        pairs = [on["wall_images_per_s"] / off["wall_images_per_s"] for on, off in zip(runs[w]["on"], runs[w]["off"])]
        summary[w] = {"tuned": med["on"], "default": med["off"],
                      "ratio_wall": med["on"]["wall_images_per_s"] / med["off"]["wall_images_per_s"],
                      "ratio_cpu_time": med["on"]["cpu_images_per_s"] / med["off"]["cpu_images_per_s"],
                      "pairwise_ratios_wall": [round(r, 3) for r in pairs],
                      "median_pairwise_ratio_wall": statistics.median(pairs)}
    data = {"rounds": rounds, "steps_per_run": steps, "summary": summary, "runs": runs, "machine": machine_info(),
            "workloads": {"train_step": "cnn-s, batch 512 of 32 px, weak augmentation + normalise, bf16 autocast, "
                                        "channels_last, SGD step, all torch threads",
                          "augment_224": "strong preset + normalise to a fresh float32 batch, 64 images of 224 px, "
                                         "1 torch thread"}}
    rows = "".join(
        f"| {w} | {s['default']['wall_images_per_s']:.0f} | {s['tuned']['wall_images_per_s']:.0f} | "
        f"{s['ratio_wall']:.2f}x | {s['default']['cpu_images_per_s']:.0f} | {s['tuned']['cpu_images_per_s']:.0f} | "
        f"{s['ratio_cpu_time']:.2f}x | {s['median_pairwise_ratio_wall']:.2f}x "
        f"({min(s['pairwise_ratios_wall']):.2f}-{max(s['pairwise_ratios_wall']):.2f}) |\n" for w, s in summary.items())
    table = ("| workload | default (img/s, wall) | tuned (img/s, wall) | ratio | default (img/s per CPU-s) | "
             "tuned (img/s per CPU-s) | ratio | round by round: median ratio (range) |\n"
             "|---|---:|---:|---:|---:|---:|---:|---:|\n" + rows +
             f"\nMedians of {rounds} fresh processes per setting, alternating. 'Tuned' is glibc mallopt: mmap "
             "threshold 32 MB, trim threshold 1 GB, top pad 64 MB (fewlabels.utils.tune_cpu_allocator, on by default "
             "on Linux; FEWLABELS_MALLOC_TUNING=0 turns it off). CPU time counts user + system time, so page faults "
             "show in it even when other processes on this shared machine blur the wall clock. The gain depends on how "
             "expensive page faults are at the moment on this VM: in earlier runs on the same day the round-by-round "
             "ratio of the training step ranged from 0.7 to 2.0.")
    write_results("cpu_allocator", data, table)
    print(table)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
