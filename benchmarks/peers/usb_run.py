"""Train one USB (semilearn) algorithm on the exported fewlabels split for a wall-clock budget, then test it.

Run with USB's own venv (benchmarks/peers/setup_usb.sh), on the arrays of export_split.py:

    benchmarks/peers/.venv-usb/bin/python benchmarks/peers/usb_run.py --algorithm fixmatch --budget-minutes 60

USB is used through its own API, the way its training script and its custom-dataset notebook use it: `get_config`
with the algorithm's classic-CV CIFAR-10/4,000-label recipe (config/classic_cv/<alg>/<alg>_cifar10_4000_0.yaml:
WRN-28-2, SGD lr 0.03 momentum 0.9 nesterov, weight decay 5e-4, batch 64 labelled + uratio x 64 unlabelled, its
cosine schedule, its weak/strong CIFAR transforms with RandAugment(3, 5) and its ImageNet mean/std), `get_net_builder`,
`get_algorithm`, `BasicDataset` and `get_data_loader` on our arrays (the dataset name given to USB is one it does not
know, so it builds and downloads nothing), and `algorithm.train()`, USB's own loop with its own hooks. The labelled
images are also in the unlabelled set (USB's include_lb_to_ulb default), as in USB's recipe.

Scaled to the budget (what the recipe's knobs allow, nothing else changed):
- num_train_iter: USB's recipe is 1,048,576 iterations; here it is what the budget buys. A first guess is re-planned
  from the measured seconds per iteration (at about 5 % of the budget, then at 25 % and 50 %): the cosine schedule
  (USB's get_cosine_schedule_with_warmup, 7/16 of a cycle, no warm-up) is re-aimed at the new total, and so is
  PseudoLabel's unsup_warm_up (a fraction of num_train_iter). Training also stops when the budget is spent (at the
  iteration boundary nearest to it: a run may end up to half an iteration over or under).
- ema_m: the recipe's 0.999 averages over the last ~1,000 of 1,048,576 iterations; kept to the same fraction of the
  run it is max(0, 1 - 0.001 x 1,048,576 / num_train_iter), i.e. 0 (no EMA) below ~1,050 iterations. With 0.999
  and a few hundred iterations the evaluated (EMA) model would be mostly the random initial weights. --ema-m 0.999
  keeps the recipe's value.
- no evaluation during training (num_eval_iter larger than the run); the test set is evaluated once at the end with
  USB's algorithm.evaluate (EMA weights, as USB reports). Evaluation and checkpoint-saving time are measured apart
  and excluded from the budget; data loading and augmentation are part of training time, as for fewlabels.

Prints one JSON line and appends it to --results: {system, algorithm, budget_minutes, test_acc, minutes,
train_images_per_s, command, ...}; train_images_per_s counts every image through the network in training (labelled
+ each view of each unlabelled image).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore", category=FutureWarning)  # timm.models.layers, torch.cuda.amp in semilearn 0.3.2
warnings.filterwarnings("ignore", message=".*GradScaler is enabled, but CUDA is not available.*")

import torch  # noqa: E402
from torchvision import transforms  # noqa: E402

try:
    from semilearn import BasicDataset, get_algorithm, get_config, get_data_loader, get_net_builder
    from semilearn.core.hooks import Hook
    from semilearn.core.utils import get_cosine_schedule_with_warmup
    from semilearn.datasets.augmentation import RandAugment
    from semilearn.datasets.cv_datasets.cifar import mean as usb_mean
    from semilearn.datasets.cv_datasets.cifar import std as usb_std
except ImportError as e:
    sys.exit(f"semilearn is not importable here ({e}): run this with benchmarks/peers/.venv-usb/bin/python, made by "
             "bash benchmarks/peers/setup_usb.sh")

PEERS = Path.home() / ".cache" / "fewlabels" / "peers"
ARRAYS = PEERS / "cifar10_4000"
RECIPE_ITERS = 1_048_576  # USB's classic-CV num_train_iter
RECIPE_EMA = 0.999

# config/classic_cv/<alg>/<alg>_cifar10_4000_0.yaml of microsoft/Semi-supervised-learning (semilearn 0.3.2)
COMMON = {
    "net": "wrn_28_2", "net_from_name": False, "use_pretrain": False,
    "batch_size": 64, "eval_batch_size": 256, "optim": "SGD", "lr": 0.03, "momentum": 0.9, "weight_decay": 5e-4,
    "layer_decay": 1.0, "ema_m": RECIPE_EMA, "crop_ratio": 0.875, "img_size": 32, "amp": False, "use_amp": False,
    "clip": 0.0, "clip_grad": 0.0, "use_cat": True, "num_classes": 10, "num_labels": 4000,
    "train_sampler": "RandomSampler", "num_workers": 1, "num_warmup_iter": 0, "include_lb_to_ulb": True,
}
RECIPES = {
    "supervised": {"uratio": 1},
    "pseudolabel": {"p_cutoff": 0.95, "ulb_loss_ratio": 1.0, "uratio": 1, "unsup_warm_up": 0.4},
    "fixmatch": {"hard_label": True, "T": 0.5, "p_cutoff": 0.95, "ulb_loss_ratio": 1.0, "uratio": 7},
    "freematch": {"hard_label": True, "T": 0.5, "ema_p": 0.999, "ent_loss_ratio": 0.001, "uratio": 7,
                  "use_quantile": False},
    "softmatch": {"hard_label": True, "T": 0.5, "dist_align": True, "dist_uniform": True, "per_class": False,
                  "ema_p": 0.999, "ulb_loss_ratio": 1.0, "n_sigma": 2, "uratio": 7},
}
VIEWS = {"supervised": 0, "pseudolabel": 1, "fixmatch": 2, "freematch": 2, "softmatch": 2}  # unlabelled views
# first guess of seconds per iteration on 2 CPU cores (re-planned from the measured speed within the first minutes)
GUESS_S_PER_ITER = {"supervised": 0.8, "pseudolabel": 1.6, "fixmatch": 7.0, "freematch": 7.0, "softmatch": 7.0}


def scaled_ema(iters: int) -> float:
    return max(0.0, 1.0 - (1.0 - RECIPE_EMA) * RECIPE_ITERS / max(iters, 1))


class BudgetHook(Hook):
    """Stops USB's loop when the training budget is spent and re-plans num_train_iter (and the cosine schedule, the
    EMA decay) from the measured seconds per iteration. Training time = wall time since before_run minus the time
    spent in evaluation and checkpoint saving (see `Excluded`)."""

    def __init__(self, budget_s: float, excluded: Excluded, ema_m: float | None, log_every: int):
        self.budget_s, self.excluded, self.fixed_ema, self.log_every = budget_s, excluded, ema_m, log_every
        self.replans = [0.05, 0.25, 0.5]
        self.first_iter_s: float | None = None
        self.t0 = 0.0
        self.train_s = 0.0
        self.stopped_by = "iterations"
        self.plan: list[dict] = []

    def before_run(self, algorithm):
        self.t0 = time.perf_counter()
        self.excluded.seconds = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0 - self.excluded.seconds

    def after_train_step(self, algorithm):
        done = algorithm.it + 1
        step_s = self.elapsed() - self.train_s
        self.train_s = t = self.elapsed()
        if self.first_iter_s is None:
            self.first_iter_s = t
        first = len(self.replans) == 3  # the first re-plan comes at 5 % of the budget or 20 iterations if sooner
        if done >= 3 and self.replans and (t >= self.replans[0] * self.budget_s or (first and done >= 20)):
            self.replans.pop(0)
            rate = (t - self.first_iter_s) / (done - 1)
            self.replan(algorithm, done + max(1, int((self.budget_s - t) / rate)), rate, done)
        if self.log_every and done % self.log_every == 0:
            print(f"[usb_run] iteration {done}/{algorithm.num_train_iter}, {t / 60:.2f} of {self.budget_s / 60:g} "
                  f"training minutes, lr {algorithm.optimizer.param_groups[0]['lr']:.4f}", flush=True)
        # stop where the run ends nearest the budget: when the next iteration would overshoot it by more than it
        # would leave unspent now
        if t + 0.5 * step_s >= self.budget_s and done < algorithm.num_train_iter:
            self.stopped_by = "budget"
            # AlgorithmBase.train stops at it >= num_train_iter; FullySupervised.train at it > num_train_iter
            algorithm.num_train_iter = done - 1 if algorithm.algorithm == "supervised" else done

    def replan(self, algorithm, total: int, rate: float, at: int) -> None:
        algorithm.num_train_iter = algorithm.args.num_train_iter = total
        sched = algorithm.scheduler
        fresh = get_cosine_schedule_with_warmup(algorithm.optimizer, total,
                                                num_warmup_steps=algorithm.args.num_warmup_iter)
        sched.lr_lambdas = fresh.lr_lambdas
        for group, base, f in zip(algorithm.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True):
            group["lr"] = base * f(sched.last_epoch)
        ema_m = self.fixed_ema if self.fixed_ema is not None else scaled_ema(total)
        algorithm.ema_m = ema_m
        if algorithm.ema is not None:
            algorithm.ema.decay = ema_m
        self.plan.append({"at_iteration": at, "s_per_iter": round(rate, 3), "num_train_iter": total,
                          "ema_m": round(ema_m, 6)})
        print(f"[usb_run] {rate:.2f} s per iteration: num_train_iter -> {total}, ema_m {ema_m:.4f}", flush=True)


class Excluded:
    """Wraps algorithm.evaluate and algorithm.save_model to time them (excluded from the training budget) and keep
    the last evaluation."""

    def __init__(self, algorithm):
        self.seconds = 0.0
        self.eval_s = 0.0
        self.last_eval: tuple[int, dict] | None = None
        evaluate, save = algorithm.evaluate, algorithm.save_model

        def timed_evaluate(*a, **k):
            t = time.perf_counter()
            out = evaluate(*a, **k)
            dt = time.perf_counter() - t
            self.seconds += dt
            self.eval_s += dt
            self.last_eval = (algorithm.it, out)
            return out

        def timed_save(*a, **k):
            t = time.perf_counter()
            out = save(*a, **k)
            self.seconds += time.perf_counter() - t
            return out

        algorithm.evaluate, algorithm.save_model = timed_evaluate, timed_save


def usb_transforms(crop: int = 32, crop_ratio: float = 0.875):
    """semilearn.datasets.cv_datasets.cifar.get_cifar's transforms (that function also downloads CIFAR-10, so it
    cannot be called on our arrays): weak = reflect-pad crop + flip, strong = weak + RandAugment(3, 5)."""
    norm = transforms.Normalize(usb_mean["cifar10"], usb_std["cifar10"])
    pad = int(crop * (1 - crop_ratio))
    base = [transforms.Resize(crop), transforms.RandomCrop(crop, padding=pad, padding_mode="reflect"),
            transforms.RandomHorizontalFlip()]
    weak = transforms.Compose([*base, transforms.ToTensor(), norm])
    strong = transforms.Compose([*base, RandAugment(3, 5), transforms.ToTensor(), norm])
    val = transforms.Compose([transforms.Resize(crop), transforms.ToTensor(), norm])
    return weak, strong, val


def load_arrays(folder: Path) -> dict[str, np.ndarray]:
    names = ("labelled_x", "labelled_y", "unlabelled_x", "unlabelled_y", "test_x", "test_y")
    missing = [n for n in names if not (folder / f"{n}.npy").is_file()]
    if missing:
        sys.exit(f"{folder} lacks {', '.join(missing)}.npy: run .venv/bin/python benchmarks/peers/export_split.py "
                 f"(fewlabels' venv) first")
    return {n: np.load(folder / f"{n}.npy") for n in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--algorithm", required=True, choices=sorted(RECIPES))
    ap.add_argument("--budget-minutes", type=float, required=True, help="training wall-clock budget")
    ap.add_argument("--arrays", type=Path, default=ARRAYS, help=f"export_split.py's folder (default {ARRAYS})")
    ap.add_argument("--results", type=Path, default=PEERS / "usb_results.jsonl",
                    help="JSON-lines file the result is appended to (default %(default)s)")
    ap.add_argument("--save-dir", type=Path, default=PEERS / "usb_runs", help="USB's checkpoint folder")
    ap.add_argument("--seed", type=int, default=0, help="USB's seed (its recipe's is 0)")
    ap.add_argument("--batch-size", type=int, default=COMMON["batch_size"], help="labelled batch (recipe: 64)")
    ap.add_argument("--uratio", type=int, default=None, help="unlabelled per labelled (recipe: 7; PseudoLabel 1)")
    ap.add_argument("--num-workers", type=int, default=COMMON["num_workers"],
                    help="USB's num_workers: the labelled loader gets this many, the unlabelled twice (recipe: 1)")
    ap.add_argument("--ema-m", type=float, default=None,
                    help="EMA decay of the evaluated model (default: the recipe's 0.999 scaled to the run's length)")
    ap.add_argument("--s-per-iter-guess", type=float, default=None,
                    help="first guess of seconds per iteration, before it is measured (default: per algorithm)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--test-images", type=int, default=None,
                    help="evaluate on this many test images only, spread evenly over the set (smoke tests; default: "
                         "all 10,000)")
    ap.add_argument("--note", default=None, help="a note kept with the result (e.g. what else ran on the machine)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    budget_s = a.budget_minutes * 60
    arr = load_arrays(a.arrays)
    if a.test_images is not None and a.test_images < len(arr["test_y"]):
        keep = np.linspace(0, len(arr["test_y"]) - 1, a.test_images).round().astype(int)
        arr["test_x"], arr["test_y"] = arr["test_x"][keep], arr["test_y"][keep]

    recipe = {**COMMON, **RECIPES[a.algorithm]}
    recipe["batch_size"] = a.batch_size
    if a.uratio is not None:
        recipe["uratio"] = a.uratio
    guess = a.s_per_iter_guess or GUESS_S_PER_ITER[a.algorithm]
    planned = max(3, int(budget_s / guess))
    cap = max(planned * 20, 1000)  # the samplers' length: enough iterations for any re-plan
    lb_x, lb_y = arr["labelled_x"], arr["labelled_y"]
    ulb_x = np.concatenate([lb_x, arr["unlabelled_x"]])  # include_lb_to_ulb, USB's default
    ulb_y = np.concatenate([lb_y, arr["unlabelled_y"]])  # never read in training: USB's datasets carry them
    save_name = f"{a.algorithm}_{a.budget_minutes:g}m_seed{a.seed}"
    config = get_config({
        **recipe, "algorithm": a.algorithm, "seed": a.seed,
        "epoch": 1, "num_train_iter": planned, "num_eval_iter": 10 ** 9, "num_log_iter": 10 ** 9,
        "ema_m": a.ema_m if a.ema_m is not None else scaled_ema(planned),
        # a dataset name USB does not know: get_dataset returns None, so nothing is built or downloaded
        "dataset": "fewlabels_cifar10_4000", "data_dir": str(a.arrays),
        "lb_dest_len": len(lb_x), "ulb_dest_len": len(ulb_x),
        "save_dir": str(a.save_dir), "save_name": save_name, "resume": False, "load_path": None, "overwrite": True,
        "use_tensorboard": False, "use_wandb": False, "use_aim": False,
        "gpu": None, "world_size": 1, "rank": 0, "distributed": False, "multiprocessing_distributed": False,
    })
    t_setup = time.perf_counter()
    algorithm = get_algorithm(config, get_net_builder(config.net, from_name=False), tb_log=None, logger=None)
    if torch.cuda.is_available():  # as USB's train.py (send_model_cuda) does for one GPU; untested here
        config.gpu = algorithm.gpu = 0
        torch.cuda.set_device(0)
        algorithm.model = algorithm.model.cuda(0)
        algorithm.ema_model = algorithm.ema_model.cuda(0)

    weak, strong, val = usb_transforms(config.img_size, config.crop_ratio)
    alg = config.algorithm
    lb_dset = BasicDataset(alg, lb_x, lb_y, config.num_classes, weak, is_ulb=False)
    ulb_dset = BasicDataset(alg, ulb_x, ulb_y, config.num_classes, weak, is_ulb=True, strong_transform=strong)
    test_dset = BasicDataset(alg, arr["test_x"], arr["test_y"], config.num_classes, val, is_ulb=False)
    algorithm.dataset_dict = {"train_lb": lb_dset, "train_ulb": ulb_dset, "eval": test_dset, "test": None}
    algorithm.loader_dict = {
        "train_lb": get_data_loader(config, lb_dset, config.batch_size, data_sampler=config.train_sampler,
                                    num_iters=cap, num_epochs=1, num_workers=a.num_workers),
        "eval": get_data_loader(config, test_dset, config.eval_batch_size, data_sampler=None,
                                num_workers=a.num_workers, drop_last=False),
    }
    if alg != "supervised":  # FullySupervised.train reads the labelled loader only
        algorithm.loader_dict["train_ulb"] = get_data_loader(
            config, ulb_dset, config.batch_size * config.uratio, data_sampler=config.train_sampler, num_iters=cap,
            num_epochs=1, num_workers=2 * a.num_workers)
    setup_s = time.perf_counter() - t_setup

    excluded = Excluded(algorithm)
    budget = BudgetHook(budget_s, excluded, a.ema_m, log_every=max(1, planned // 10))
    algorithm.register_hook(budget, "BudgetHook", "LOWEST")
    print(f"[usb_run] USB {alg}, WRN-28-2, {len(lb_x)} labelled, {len(ulb_x)} unlabelled (labelled included), "
          f"{len(arr['test_x'])} test; batch {config.batch_size} + {config.uratio} x {config.batch_size} unlabelled; "
          f"budget {a.budget_minutes:g} min, first plan {planned} iterations; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    t_run = time.perf_counter()
    algorithm.train()
    wall_s = time.perf_counter() - t_run
    train_s = budget.train_s
    iters = algorithm.it

    if excluded.last_eval is not None and excluded.last_eval[0] == iters - 1:
        result = excluded.last_eval[1]  # USB's own evaluation of its last iteration
    else:
        result = algorithm.evaluate("eval")
    test_acc = float(result["eval/top-1-acc"])
    per_iter = config.batch_size + config.batch_size * config.uratio * VIEWS[alg]
    command = " ".join(["benchmarks/peers/.venv-usb/bin/python", "benchmarks/peers/usb_run.py",
                        *(shlex.quote(x) for x in sys.argv[1:])])
    out = {
        "system": "usb", "algorithm": alg, "budget_minutes": a.budget_minutes, "test_acc": round(test_acc, 4),
        "minutes": round(train_s / 60, 3), "train_images_per_s": round(iters * per_iter / max(train_s, 1e-9), 1),
        "command": command,
        "iterations": iters, "s_per_iter": round(train_s / max(iters, 1), 3), "stopped_by": budget.stopped_by,
        "plan": budget.plan, "ema_m": algorithm.ema_m,
        "recipe": {k: v for k, v in recipe.items() if k not in ("amp", "clip", "use_amp")},
        "test_images": len(arr["test_y"]), "eval_minutes": round(excluded.eval_s / 60, 3),
        "excluded_minutes": round(excluded.seconds / 60, 3),
        "setup_minutes": round(setup_s / 60, 3), "wall_minutes_in_train": round(wall_s / 60, 3),
        "test_metrics": {k: round(float(v), 4) for k, v in result.items() if not k.endswith("logits")},
        "arrays": str(a.arrays).replace(str(Path.home()), "~"),
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()]},
        "semilearn": "0.3.2 + benchmarks/peers/PATCHES.md", "seed": a.seed,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if a.note:
        out["note"] = a.note
    line = json.dumps(out)
    a.results.parent.mkdir(parents=True, exist_ok=True)
    with a.results.open("a") as f:
        f.write(line + "\n")
    print(f"[usb_run] {alg}: test accuracy {test_acc:.4f} after {iters} iterations in {train_s / 60:.2f} training "
          f"minutes ({out['train_images_per_s']} images/s), evaluation {excluded.eval_s:.0f} s; appended to "
          f"{a.results}")
    print(line)


def _cpu() -> str:
    try:
        for row in Path("/proc/cpuinfo").read_text().splitlines():
            if row.startswith("model name"):
                return row.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
