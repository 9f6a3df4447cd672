"""Pseudo-labelling a pool larger than it is comfortable to hold: 1,000,000 images at 32 px (2.9 GiB decoded), read
memory-mapped from the decode cache, against a bare `torch.no_grad()` forward pass of the same model over in-memory
batches. Target (issue 30): peak RSS ≤ 2 GB and throughput ≥ 0.9 × the bare pass.

The pool is synthetic (random pixels, seeded), written once as a decode-cache split file (fewlabels.data.cache's
format) under ~/.cache/fewlabels/bench/; only the labelling is timed. Each measurement runs in a fresh process so
that its peak RSS (ru_maxrss) is its own:

- stream: fewlabels.methods.pseudolabel.pool_logits over the memory-mapped pool, saved every 65,536 images (the
  resumable path `selftrain` and `pseudolabel` use), each labelled chunk released from the resident memory;
- bare: the same model, autocast dtype and memory format, forward passes over one in-memory normalised batch, repeated
  (no data loading at all: the upper bound).

    .venv/bin/python benchmarks/pool_streaming.py [--images 1000000] [--model cnn-s] [--bare-images 200000] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_main, started, write_results

SHAPE = (3, 32, 32)
BATCH = 256


class _Noise:
    """Seeded random images, generated chunk by chunk as the cache writer slices them."""

    def __init__(self, n: int) -> None:
        self.shape = (n, *SHAPE)

    def __getitem__(self, key: slice):
        import torch
        start = key.start or 0
        g = torch.Generator().manual_seed(start)
        return torch.randint(0, 256, (min(key.stop, self.shape[0]) - start, *SHAPE), dtype=torch.uint8, generator=g)


def build_pool(n: int) -> Path:
    import torch

    from fewlabels.data import cache
    folder = Path.home() / ".cache" / "fewlabels" / "bench" / "pool_streaming"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"pool-{n}.safetensors"
    if not path.is_file():
        t0 = time.perf_counter()
        cache._write_split(path, _Noise(n), torch.full((n,), -1, dtype=torch.long), None)
        print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s")
    return path


CHILD = r'''
import json, resource, sys, tempfile, time
from pathlib import Path
import torch
from fewlabels.data.cache import _read_split
from fewlabels.data.imageset import ImageSet
from fewlabels.eval import normalize, stats_tensors
from fewlabels.methods.pseudolabel import pool_logits
from fewlabels.models import create_model
from fewlabels.utils import autocast, pick_dtype
mode, path, model_name, bare_n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.manual_seed(0)
model = create_model(model_name, 10, 3).eval().to(memory_format=torch.channels_last)
meta = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
cpu = torch.device("cpu")
if mode == "stream":
    images, labels = _read_split(Path(path))
    pool = ImageSet(images, labels, [str(i) for i in range(10)])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        z = pool_logits(model, meta, pool, device=cpu, resume_in=Path(tmp) / "partial")
        seconds = time.perf_counter() - t0
    n = len(pool)
    assert z.shape == (n, 10) and bool(torch.isfinite(z).all())
else:
    m, s = stats_tensors(meta["mean"], meta["std"], cpu)
    x = normalize(torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8), m, s, True)
    dtype = pick_dtype("auto", cpu)
    steps = max(1, bare_n // 256)
    with torch.no_grad(), autocast(cpu, dtype):
        model(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            model(x).float()
        seconds = time.perf_counter() - t0
    n = steps * 256
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
print(json.dumps({"mode": mode, "images": n, "seconds": seconds, "images_per_s": n / seconds, "peak_rss_gb": peak}))
'''


def _child(mode: str, path: Path, model: str, bare_n: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), model, str(bare_n)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--bare-images", type=int, default=200_000, help="images through the bare pass (a rate)")
    ap.add_argument("--model", default="cnn-s")
    ap.add_argument("--smoke", action="store_true", help="100,000 images: checks the script, not the claim")
    args = ap.parse_args()
    n = 100_000 if args.smoke else args.images
    meta = started()
    path = build_pool(n)
    # interleaved, as the machine is shared: bare, stream, bare
    runs = [_child("bare", path, args.model, args.bare_images), _child("stream", path, args.model, 0),
            _child("bare", path, args.model, args.bare_images)]
    stream = runs[1]
    bare = sorted(r["images_per_s"] for r in (runs[0], runs[2]))
    bare_rate = sum(bare) / 2
    ratio = stream["images_per_s"] / bare_rate
    data = {"pool_images": n, "pool_gib": round(n * math.prod(SHAPE) / 2**30, 2), "model": args.model,
            "peak_rss_gb": round(stream["peak_rss_gb"], 3), "ratio_vs_bare": round(ratio, 3),
            "stream_images_per_s": round(stream["images_per_s"], 1), "bare_images_per_s": [round(b, 1) for b in bare],
            "stream_minutes": round(stream["seconds"] / 60, 2), "targets": {"peak_rss_gb": 2.0, "ratio_vs_bare": 0.9},
            "smoke": args.smoke, **meta}
    table = ("| pool images | decoded | peak RSS (GB) | stream images/s | bare images/s | ratio |\n"
             "|---:|---:|---:|---:|---:|---:|\n"
             f"| {n:,} | {data['pool_gib']} GiB | {data['peak_rss_gb']} | {data['stream_images_per_s']:,} | "
             f"{bare_rate:,.0f} | {ratio:.3f} |\n\n"
             f"Targets (issue 30): peak RSS ≤ 2 GB: {'met' if data['peak_rss_gb'] <= 2 else 'not met'}; "
             f"≥ 0.9 × the bare pass: {'met' if ratio >= 0.9 else 'not met'}. The bare figure is the mean of one "
             "pass before and one after the streamed one (the machine is shared).\n")
    write_results("pool_streaming_smoke" if args.smoke else "pool_streaming", data, table)
    print(table)


if __name__ == "__main__":
    run_main(main)
