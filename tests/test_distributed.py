"""`torchrun --nproc_per_node 2 -m fewlabels ...` on the CPU (gloo): two real processes on this 2-core machine.

Tolerance for accuracy against a one-process run: 3 points on digits' 359 test images. The two runs see the same
global batches but not the same augmentations (each rank has its own stream) and their BatchNorm statistics come
from half a batch, so they are two different draws of the same recipe: two one-process runs that differ only in their
seed differ by about that much here (11 images), and a real DDP bug (unsynchronised gradients, a rank training on
the wrong shard, logits gathered out of order) costs far more.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fewlabels import pseudolabel, train

DIGITS = ["--data", "digits", "--device", "cpu", "--batch-size", "64"]
TOLERANCE = 0.03


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env["OMP_NUM_THREADS"] = "1"  # two processes on two cores
    return env


def _torchrun(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "fewlabels",
           *args]
    return subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kw)


def _run(args: list[str], cwd: Path, timeout: float = 300) -> str:
    p = _torchrun(args, cwd)
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-3000:]
    return out


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.name not in ("report.html",) and ".elapsed" not in p.name}


def test_train_two_processes_matches_one(tmp_path):
    out = _run(["train", *DIGITS, "--epochs", "6", "--out", str(tmp_path / "ddp")], tmp_path)
    assert out.count("done: ") == 1, "only rank 0 prints"
    one = train(data="digits", device="cpu", batch_size=64, epochs=6, quiet=True, out=str(tmp_path / "one"))
    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert _files(tmp_path / "ddp") == _files(tmp_path / "one")
    assert abs(ddp["test_acc"] - one["test_acc"]) <= TOLERANCE, (ddp["test_acc"], one["test_acc"])
    env = json.loads((tmp_path / "ddp" / "environment.json").read_text())
    assert env["world_size"] == 2
    assert not (tmp_path / "ddp" / ".rank1").exists(), "rank 1's copy is removed"


def test_selftrain_two_processes(tmp_path):
    args = ["selftrain", *DIGITS, "--labels-per-class", "5", "--teacher-epochs", "6", "--student-epochs", "3",
            "--rounds", "1"]
    _run([*args, "--out", str(tmp_path / "ddp")], tmp_path)
    from fewlabels import selftrain
    selftrain(data="digits", device="cpu", batch_size=64, labels_per_class=5, teacher_epochs=6, student_epochs=3,
              rounds=1, quiet=True, out=str(tmp_path / "one"))
    assert _files(tmp_path / "ddp") == _files(tmp_path / "one")
    rows = json.loads((tmp_path / "ddp" / "rounds.json").read_text())
    assert [r["round"] for r in rows] == [0, 1] and rows[1]["pseudo_labels"] > 0


def test_gathered_pseudo_labels_equal_one_process(tmp_path):
    train(data="digits", device="cpu", labels_per_class=10, epochs=4, quiet=True, out=str(tmp_path / "teacher"))
    common = ["--teacher", str(tmp_path / "teacher"), "--labels-per-class", "10", "--threshold", "0.5"]
    _run(["pseudolabel", "--data", "digits", "--device", "cpu", *common, "--out", str(tmp_path / "ddp")], tmp_path)
    pseudolabel(data="digits", device="cpu", teacher=str(tmp_path / "teacher"), labels_per_class=10, threshold=0.5,
                quiet=True, out=str(tmp_path / "one"))
    a = load_file(str(tmp_path / "ddp" / "pseudo_labels.safetensors"))
    b = load_file(str(tmp_path / "one" / "pseudo_labels.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], atol=2e-2, rtol=0)  # bf16 logits, other batch boundaries
        else:
            assert torch.equal(a[k], b[k]), k


def _rank_pid(parent: int, rank: int) -> int | None:
    for child in Path("/proc").iterdir():
        if not child.name.isdigit():
            continue
        try:
            env = (child / "environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in env and b"TORCHELASTIC_RUN_ID" in b"".join(env) and \
                    int((child / "stat").read_text().split()[3]) == parent:
                return int(child.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the rank's process through /proc")
def test_kill_one_rank_then_the_same_command_resumes(tmp_path):
    run = tmp_path / "ddp"
    args = ["train", *DIGITS, "--epochs", "40", "--out", str(run)]
    p = _torchrun(args, tmp_path)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (run / "metrics.jsonl").is_file():
            time.sleep(0.2)
        assert (run / "metrics.jsonl").is_file(), "no epoch finished"
        pid = None
        while pid is None and time.time() < deadline:
            pid = _rank_pid(p.pid, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        out, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode != 0
    done = len((run / "metrics.jsonl").read_text().splitlines())
    assert done < 40, "the run ended before the kill: lengthen it"
    assert (run / ".rank1").is_dir()  # the killed rank's copy, replaced at the next start
    out = _run(args, tmp_path)
    assert "resuming from" in out and not (run / ".rank1").exists()
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 41))


def test_sync_bn_on_cpu_is_one_clear_error(tmp_path):
    p = _torchrun(["train", *DIGITS, "--epochs", "1", "--sync-bn", "--out", str(tmp_path / "r")], tmp_path)
    out, _ = p.communicate(timeout=300)
    assert p.returncode != 0
    assert "fewlabels: error: --sync-bn needs CUDA GPUs" in out
    assert not re.search(r"\[rank\d\]: (Traceback|\w+Error)", out), "a worker traceback"
