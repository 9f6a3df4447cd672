"""Image-folder decoding: the 50,000 CIFAR-10 training JPEGs with 1 vs 2 worker processes, then the cached load.

Needs the JPEG copy of CIFAR-10 from ../shared/data/cifar10-jpeg.tar.gz unpacked at ~/.cache/fewlabels/shared
(train/<class>/*.jpg; $FEWLABELS_CIFAR_JPEG overrides the folder). Each decode run uses a fresh temporary cache
folder, so it decodes everything; the cached run then loads the entry the 2-worker run wrote. The files are read
once before timing so every run sees the same (warm) page cache.

    .venv/bin/python benchmarks/decode_cache.py [--repeats 3] [--cached-repeats 5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from fewlabels.data import cache, folder
from fewlabels.data.sources import load_dataset

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DATA = Path(os.environ.get("FEWLABELS_CIFAR_JPEG", "~/.cache/fewlabels/shared")).expanduser()


def check_data() -> Path:
    train = DATA / "train"
    if not train.is_dir():
        sys.exit(f"{train} is missing. This benchmark needs CIFAR-10 as JPEGs: unpack the project's shared archive "
                 f"there with\n  mkdir -p {DATA} && tar xzf ../shared/data/cifar10-jpeg.tar.gz -C {DATA}\n"
                 "(or set FEWLABELS_CIFAR_JPEG to a folder that holds train/<class>/*.jpg).")
    return train


def warm_page_cache(train: Path) -> int:
    n = 0
    for path in train.rglob("*.jpg"):
        path.read_bytes()
        n += 1
    return n


def _burn(_: int) -> float:
    start = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return time.perf_counter() - start


def free_cores() -> float:
    """How many cores this benchmark really gets: a fixed pure-Python task alone vs two copies at once. Other
    processes on a shared machine can take a core, and then no decoder can show a 2-worker speedup."""
    alone = _burn(0)
    with mp.get_context("fork").Pool(2) as pool:
        start = time.perf_counter()
        pool.map(_burn, [0, 1])
        both = time.perf_counter() - start
    return round(2 * alone / both, 2)


def timed_load(view: Path, cache_dir: Path, workers: int) -> tuple[float, torch.Tensor, bool]:
    start = time.perf_counter()
    ds = load_dataset(str(view), cache_dir=cache_dir, workers=workers, progress=False)
    return time.perf_counter() - start, ds.train.images, ds.info["cache_hit"]


def cached_breakdown(view: Path, cache_dir: Path) -> dict[str, float]:
    """Seconds for each step of a cached load: listing, stat + hash of every file, reading the entry."""
    t0 = time.perf_counter()
    files = folder.list_folder(view)
    t1 = time.perf_counter()
    entry = folder.cache_entry(files, cache_dir, image_size=None, bad_images="stop")
    t2 = time.perf_counter()
    assert cache.load(entry, files.root) is not None, "the cache entry was not found"
    t3 = time.perf_counter()
    return {"list_s": round(t1 - t0, 3), "stat_hash_s": round(t2 - t1, 3), "read_entry_s": round(t3 - t2, 3)}


def run(repeats: int, cached_repeats: int) -> dict:
    train = check_data()
    n_files = warm_page_cache(train)
    load_before = os.getloadavg()[0]
    cores_before = free_cores()
    print(f"free cores: {cores_before}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fewlabels-bench-") as tmp:
        view = Path(tmp) / "cifar10-jpeg"
        view.mkdir()
        (view / "train").symlink_to(train)  # DIR/train layout: all 50k files are training images, none held out
        decode: dict[int, list[float]] = {}
        images: dict[int, torch.Tensor] = {}
        cpu: dict[int, list[float]] = {}
        for r in range(repeats):
            for workers in (1, 2):  # interleaved, so a burst of load from other processes hits both alike
                before = os.times()
                seconds, images[workers], hit = timed_load(view, Path(tmp) / f"cache-{workers}-{r}", workers)
                after = os.times()
                assert not hit
                decode.setdefault(workers, []).append(round(seconds, 2))
                cpu.setdefault(workers, []).append(round(sum(after[:4]) - sum(before[:4]), 2))
                print(f"decode, {workers} worker(s): {seconds:.2f} s wall, {cpu[workers][-1]:.2f} s CPU", flush=True)
        assert torch.equal(images[1], images[2]), "1 and 2 workers decoded different pixels"
        cached = []
        for _ in range(cached_repeats):
            seconds, _, hit = timed_load(view, Path(tmp) / "cache-2-0", 2)
            assert hit
            cached.append(round(seconds, 3))
        print(f"cached load: {statistics.median(cached):.3f} s", flush=True)
        breakdown = cached_breakdown(view, Path(tmp) / "cache-2-0")
        entry_mb = sum(p.stat().st_size for p in (Path(tmp) / "cache-2-0").rglob("*") if p.is_file()) / 2**20
    best = {w: min(times) for w, times in decode.items()}
    return {
        "files": n_files, "shape": list(images[2].shape), "data": str(train),
        "decode_s": {str(w): times for w, times in decode.items()},
        "decode_best_s": {str(w): t for w, t in best.items()},
        "decode_cpu_s": {str(w): times for w, times in cpu.items()},  # user + system, this process + workers
        "images_per_s": {str(w): round(n_files / t) for w, t in best.items()},
        "speedup_2_vs_1": round(best[1] / best[2], 2),
        "cached_load_s": cached, "cached_load_median_s": statistics.median(cached),
        "cached_breakdown": breakdown, "cache_entry_mb": round(entry_mb, 1),
        "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2),
        "free_cores_before": cores_before, "free_cores_after": free_cores(),
    }


def table(data: dict) -> str:
    rows = ["| step | time | images/s |", "| --- | --- | --- |"]
    for w in ("1", "2"):
        rows.append(f"| first load, decode with {w} worker(s) (best of {len(data['decode_s'][w])}) | "
                    f"{data['decode_best_s'][w]:.2f} s | {data['images_per_s'][w]} |")
    rows.append(f"| second load, from the cache (median of {len(data['cached_load_s'])}) | "
                f"{data['cached_load_median_s']:.3f} s | |")
    b = data["cached_breakdown"]
    return "\n".join(rows) + (
        f"\n\n2 workers vs 1: {data['speedup_2_vs_1']}x. Cached load = listing {b['list_s']} s + stat and hash of "
        f"{data['files']} files {b['stat_hash_s']} s + reading the {data['cache_entry_mb']} MB entry "
        f"{b['read_entry_s']} s (+ building the Dataset). First loads include listing, a sampled header scan, decode, "
        f"statistics and writing the cache. Free cores measured before/after (a fixed task alone vs two at once): "
        f"{data['free_cores_before']} / {data['free_cores_after']}; load average {data['load_average_before']} / "
        f"{data['load_average_after']}.")


def write(data: dict, table_md: str) -> None:
    """Through benchmarks/_common.py when the project has it, else JSON + Markdown with the same metadata."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from _common import write_results
    except ImportError:
        from fewlabels.utils import environment_info, write_json

        data = {"name": "decode_cache", **environment_info(), **data}
        write_json(RESULTS / "decode_cache.json", data)
        meta = (f"{data['date']}, {data['cpu']} ({data['cores']} cores), torch {data['torch']}, "
                f"commit {data['git_commit'][:10]}")
        (RESULTS / "decode_cache.md").write_text(f"# Decode and cache\n\n`{data['command']}`\n\n{meta}\n\n"
                                                 f"{table_md}\n")
        return
    write_results("decode_cache", data, table_md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="decode runs per worker count (best is reported)")
    parser.add_argument("--cached-repeats", type=int, default=5)
    args = parser.parse_args()
    data = {"command": " ".join([".venv/bin/python", *sys.argv]), **run(args.repeats, args.cached_repeats)}
    table_md = table(data)
    print(table_md)
    write(data, table_md)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
