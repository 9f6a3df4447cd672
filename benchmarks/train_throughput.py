"""Training-loop overhead: fewlabels' fit() vs a bare PyTorch loop, side by side in one process.

Same model, batch, precision and data (a uint8 tensor in memory, normalised per batch), no augmentation, no
evaluation. Also records the bare loop in fp32, bf16 autocast, and bf16 autocast + channels_last. Runs on the device
fewlabels picks (CUDA when present); on a GPU give it more steps, e.g. `--steps 100`.

--noised adds fit() as a Noisy Student trains: `strong` augmentation, dropout 0.2, stochastic depth 0.1
(`ours_bf16_cl_noised`) and, on CUDA, the same with every per-batch parameter copied to the GPU from pageable memory
instead of through fewlabels.utils.to_device's pinned staging (`ours_bf16_cl_noised_pageable`): each such copy makes
CUDA drain its queue first, which is what the A/B measures.

--mapped adds fit() training from the same images memory-mapped from a decode-cache file (`ours_bf16_cl_mapped`),
as a folder or pool larger than memory is read (issue 30: ≥ 0.95 × training from the in-RAM tensor).

    .venv/bin/python benchmarks/train_throughput.py [--model cnn-m] [--repeats 5] [--device auto] [--noised]
                                                    [--mapped] [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import results_name, write_results  # noqa: E402

from fewlabels.engine.config import TrainConfig  # noqa: E402
from fewlabels.engine.loop import TrainSet, Watch, fit  # noqa: E402
from fewlabels.eval import normalize, stats_tensors  # noqa: E402
from fewlabels.losses import soft_cross_entropy  # noqa: E402
from fewlabels.models import create_model  # noqa: E402
from fewlabels.targets import one_hot as smooth_one_hot  # noqa: E402
from fewlabels.utils import pick_device, synchronize  # noqa: E402

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def bare_loop(model, images, labels, batch, steps, dtype, channels_last) -> float:
    """images/s of the plainest correct loop: index, normalise, forward, backward, step."""
    dev = images.device
    model = model.to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    m, s = stats_tensors(MEAN, STD, dev)
    targets = smooth_one_hot(labels, 10)
    model.train()
    perm = torch.randperm(images.shape[0]).to(dev)
    t0 = None
    for i in range(steps + 1):  # step 0 warms up and is not timed
        if i == 1:
            synchronize(dev)
            t0 = time.perf_counter()
        idx = perm[(i * batch) % (images.shape[0] - batch):][:batch]
        x = normalize(images[idx], m, s, channels_last)
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = soft_cross_entropy(model(x), targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    synchronize(dev)
    return steps * batch / (time.perf_counter() - t0)


def ours(model, images, labels, batch, steps, precision, augment: str = "none") -> float:
    n = batch * steps
    ts = TrainSet(images[:n], smooth_one_hot(labels[:n], 10), torch.ones(n, dtype=torch.bool), norm=(MEAN, STD))
    cfg = TrainConfig(epochs=2, batch_size=batch, augment=augment, precision=precision, warmup_epochs=0, lr=0.01,
                      device=str(images.device))
    res = fit(model, ts, cfg, watch=Watch(log=lambda *_: None))
    return res.history[-1]["images_per_s"]  # epoch 2: epoch 1 includes warm-up


_TO_DEVICE_USERS = ("fewlabels.augment.functional", "fewlabels.augment.ops", "fewlabels.augment.presets",
                    "fewlabels.augment.randaugment", "fewlabels.augment.mix", "fewlabels.engine.loop")


@contextlib.contextmanager
def pageable_copies():
    """fit() with plain `.to(device)` copies from pageable memory instead of fewlabels.utils.to_device."""
    def plain(t, device, dtype=None):
        return t.to(device=torch.device(device), dtype=dtype or t.dtype, non_blocking=True)

    mods = [importlib.import_module(m) for m in _TO_DEVICE_USERS]
    saved = [m.to_device for m in mods]
    for m in mods:
        m.to_device = plain
    try:
        yield
    finally:
        for m, f in zip(mods, saved):
            m.to_device = f


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cnn-m")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--results-name", type=results_name, default="train_throughput",
                    help="file name under benchmarks/results/ (another name keeps the main result)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument("--noised", action="store_true",
                    help="also fit() with strong augmentation, dropout and drop-path (and, on CUDA, pageable copies)")
    ap.add_argument("--mapped", action="store_true",
                    help="also fit() from the images memory-mapped from a decode-cache file (CPU)")
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    if a.smoke:
        a.steps, a.repeats, a.model = 2, 1, "cnn-tiny"
    dev = pick_device(a.device)
    torch.manual_seed(0)
    n = a.batch * a.steps
    images = torch.randint(0, 256, (max(n, 2 * a.batch), 3, 32, 32), dtype=torch.uint8).to(dev)
    labels = torch.randint(0, 10, (images.shape[0],)).to(dev)
    names = ["ours_bf16_cl", "bare_bf16_cl", "bare_bf16", "bare_fp32"] + (["ours_bf16_cl_mapped"] if a.mapped else [])
    mapped = None
    if a.mapped:
        import tempfile

        from fewlabels.data import cache
        tmp = Path(tempfile.mkdtemp())
        cache._write_split(tmp / "train.safetensors", images.cpu(), labels.cpu(), None)
        mapped = cache._read_split(tmp / "train.safetensors")[0]
    if a.noised:
        names += ["ours_bf16_cl_noised"] + (["ours_bf16_cl_noised_pageable"] if dev.type == "cuda" else [])
    runs: dict[str, list[float]] = {k: [] for k in names}

    def noised_model():
        return create_model(a.model, 10, drop_rate=0.2, drop_path_rate=0.1)
    for r in range(a.repeats):  # interleaved, so drift on a shared machine hits every variant alike
        torch.manual_seed(r)
        runs["ours_bf16_cl"].append(ours(create_model(a.model, 10), images, labels, a.batch, a.steps, "bf16"))
        runs["bare_bf16_cl"].append(bare_loop(create_model(a.model, 10), images, labels, a.batch, a.steps,
                                              torch.bfloat16, True))
        runs["bare_bf16"].append(bare_loop(create_model(a.model, 10), images, labels, a.batch, a.steps,
                                           torch.bfloat16, False))
        runs["bare_fp32"].append(bare_loop(create_model(a.model, 10), images, labels, a.batch, a.steps, None, False))
        if mapped is not None:
            torch.manual_seed(r)
            runs["ours_bf16_cl_mapped"].append(ours(create_model(a.model, 10), mapped, labels.cpu(), a.batch, a.steps,
                                                    "bf16"))
        if a.noised:
            runs["ours_bf16_cl_noised"].append(ours(noised_model(), images, labels, a.batch, a.steps, "bf16", "strong"))
            if "ours_bf16_cl_noised_pageable" in runs:
                with pageable_copies():
                    runs["ours_bf16_cl_noised_pageable"].append(
                        ours(noised_model(), images, labels, a.batch, a.steps, "bf16", "strong"))
        print({k: round(v[-1], 1) for k, v in runs.items()}, flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    ratio = med["ours_bf16_cl"] / med["bare_bf16_cl"]
    data = {"model": a.model, "batch": a.batch, "device": str(dev), "steps_per_run": a.steps, "repeats": a.repeats,
            "images_per_s_median": med, "images_per_s_runs": runs, "ratio_vs_bare_loop": ratio,
            "target_ratio": 0.95, "met": ratio >= 0.95, "bf16_cl_vs_fp32": med["bare_bf16_cl"] / med["bare_fp32"],
            "bf16_vs_fp32": med["bare_bf16"] / med["bare_fp32"], "smoke": a.smoke}
    if a.mapped:
        data["mapped_vs_in_memory"] = med["ours_bf16_cl_mapped"] / med["ours_bf16_cl"]
    if a.noised:
        data["noised_vs_plain"] = med["ours_bf16_cl_noised"] / med["ours_bf16_cl"]
        if "ours_bf16_cl_noised_pageable" in med:
            data["pinned_vs_pageable_noised"] = med["ours_bf16_cl_noised"] / med["ours_bf16_cl_noised_pageable"]
    table = ("| variant | images/s (median) |\n|---|---|\n"
             + "".join(f"| {k} | {v:.0f} |\n" for k, v in med.items())
             + f"\nratio_vs_bare_loop = {ratio:.3f} (target ≥ 0.95: {'met' if ratio >= 0.95 else 'NOT met'}); "
             f"bf16+channels_last vs fp32 = {data['bf16_cl_vs_fp32']:.2f}×\n")
    if a.mapped:
        mr = data["mapped_vs_in_memory"]
        table += (f"fit() from the memory-mapped cache file vs from the in-RAM tensor: {mr:.3f}× "
                  f"(target ≥ 0.95: {'met' if mr >= 0.95 else 'NOT met'})\n")
    if a.noised:
        table += f"noised (strong augmentation, dropout, drop-path) vs plain fit(): {data['noised_vs_plain']:.2f}×\n"
        if "pinned_vs_pageable_noised" in data:
            table += f"noised, pinned vs pageable parameter copies: {data['pinned_vs_pageable_noised']:.2f}×\n"
    write_results(a.results_name + ("_smoke" if a.smoke else ""), data, table)
    print(table)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
