"""One run per folder, and kill -9 at any point resumes: real processes (issue 28, item 2 and "proof")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fcntl")

TRAIN = ["-m", "fewlabels", "train", "--data", "digits", "--model", "cnn-tiny", "--labels-per-class", "20",
         "--batch-size", "64", "--hflip", "false", "--device", "cpu"]


def _wait_for_lock(out: Path, pid: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    lock = out / ".fewlabels.lock"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if lock.is_file() and lock.read_text().strip() == str(pid):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the first run ended early: {proc.communicate()}")
        time.sleep(0.1)
    raise AssertionError("the first run never locked its folder")


def test_a_second_process_on_the_same_run_folder_is_refused_and_kill_9_releases_it(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen([sys.executable, *TRAIN, "--epochs", "500", "--out", str(out)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lock(out, first.pid, first)
        second = subprocess.run([sys.executable, *TRAIN, "--epochs", "500", "--out", str(out)], env=env,
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip() == (f"fewlabels: error: {out} is in use by another fewlabels process (PID "
                                         f"{first.pid}): wait for it to end, or give this run another --out")
        config = (out / "config.yaml").read_text()
        assert "epochs: 500" in config  # the first run's own config, untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    # kill -9 releases the lock: the folder can be locked (and the run resumed) again
    again = subprocess.run([sys.executable, "-c", "import sys; from fewlabels.runs import run_folder; "
                            "run_folder(sys.argv[1], 'train'); print('locked')", str(out)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.strip() == "locked", again.stderr


def test_one_process_may_run_two_commands_on_one_folder(tmp_path):
    from fewlabels.runs import lock_run

    lock_run(tmp_path)
    lock_run(tmp_path)  # a second command from the same Python session: its own lock, no error


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_selftrain_killed_at_seeded_points_resumes_to_the_same_weights(tmp_path):
    """SIGKILL `selftrain` at a seeded set of points (an epoch of round 0, an epoch of round 1), rerun the same command
    each time: the final weights equal those of an uninterrupted run, bit for bit (CPU, one thread)."""
    import random

    from safetensors.torch import load_file

    args = ["-m", "fewlabels", "selftrain", "--data", "digits", "--labels-per-class", "5", "--rounds", "1",
            "--teacher-model", "cnn-tiny", "--student-models", "cnn-tiny", "--teacher-epochs", "4",
            "--student-epochs", "4", "--batch-size", "64", "--hflip", "false", "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    whole = tmp_path / "whole"
    subprocess.run([sys.executable, *args, "--out", str(whole)], env=env, check=True, timeout=600)
    rng = random.Random(0)
    points = [("round0", rng.randint(1, 3)), ("round1", rng.randint(1, 3))]  # after this many epochs of that round
    run = tmp_path / "killed"
    for folder, epochs in points:
        p = subprocess.Popen([sys.executable, *args, "--out", str(run)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        end = time.monotonic() + 600
        while time.monotonic() < end and p.poll() is None and _lines(run / folder / "metrics.jsonl") < epochs:
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        assert p.returncode == -signal.SIGKILL and not (run / "rounds.json").exists()  # killed part-way
    subprocess.run([sys.executable, *args, "--out", str(run)], env=env, check=True, timeout=600)
    a = load_file(whole / "checkpoints" / "best" / "model.safetensors")
    b = load_file(run / "checkpoints" / "best" / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), points
