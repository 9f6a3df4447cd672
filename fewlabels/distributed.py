"""Several processes, one run: `torchrun --nproc_per_node N -m fewlabels <command> ...` (PyTorch's DDP).

torchrun starts N processes with RANK, LOCAL_RANK, WORLD_SIZE and a rendezvous in their environment; fewlabels joins
them into one process group (gloo on CPU, NCCL on CUDA, each rank on its own GPU: cuda:LOCAL_RANK) the first time it
needs one. A run folder is rank 0's; the other ranks work on a private copy of it (see `shadow`). Every rank runs the
whole command, the same code in the same order, so the collectives (DDP's gradient all-reduce, the gathers of
evaluation and pseudo-labelling) line up without any coordination in the commands themselves:

- training: every rank draws the same global batches (seeded by seed and epoch) and trains on its strided share of
  each, with its own augmentation stream (seed, epoch, rank); DDP averages the gradients, so --batch-size and --lr
  mean what they mean in one process; BatchNorm statistics are per rank unless --sync-bn, and rank 0's buffers are
  given to all ranks after every epoch, so every rank holds the same model bit for bit;
- evaluation and pseudo-labelling: each rank predicts a contiguous shard of the images and the logits are gathered
  in dataset order on every rank (eval.predict_logits), so every rank takes the same decisions (best epoch,
  pseudo-labels, which round is final);
- files: only rank 0 writes the run folder. Rank k > 0 copies it, as it is when the run starts, into `RUN/.rank<k>/`
  and writes there, so what it reads back (a round's checkpoint, a results file) is what rank 0 reads; the copy is
  removed when the process ends (and replaced at the next start if a kill left it). A resumed run therefore resumes
  on every rank from rank 0's files, whatever rank was killed and whatever the world size was before.

A plain `fewlabels ...` (no WORLD_SIZE, or WORLD_SIZE=1) never touches torch.distributed.
"""

from __future__ import annotations

import atexit
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from .errors import FewLabelsError


def world_size() -> int:
    """The number of processes of this run (torchrun's WORLD_SIZE), 1 in a plain run."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (torchrun's RANK), 0 in a plain run."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def active() -> bool:
    """Whether this process is one of several: joins the process group on first use."""
    if world_size() <= 1:
        return False
    init()
    return True


def init() -> None:
    """Join torchrun's process group (idempotent): NCCL when this rank's device is a CUDA GPU, else gloo."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if "MASTER_ADDR" not in os.environ:
        raise FewLabelsError("WORLD_SIZE is set but no rendezvous (MASTER_ADDR): start several processes with "
                             "`torchrun --nproc_per_node N -m fewlabels ...`")
    cuda = torch.cuda.is_available() and os.environ.get("FEWLABELS_DDP_BACKEND", "") != "gloo"
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if cuda else "gloo")
    atexit.register(_finish)


def _finish() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # pragma: no cover - a peer already gone: nothing left to tidy
            pass


def barrier() -> None:
    if active():
        import torch.distributed as dist
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not active():
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _device_for_collectives(t: torch.Tensor) -> torch.device:
    import torch.distributed as dist
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over the ranks (the same value on every rank)."""
    if not active():
        return t
    import torch.distributed as dist
    x = t.detach().to(_device_for_collectives(t), torch.float64).clone()
    dist.all_reduce(x)
    return (x / world_size()).to(t.device, t.dtype)


def broadcast_(tensors: list[torch.Tensor]) -> None:
    """Overwrite each tensor (in place) with rank 0's."""
    if not active():
        return
    import torch.distributed as dist
    for t in tensors:
        dev = _device_for_collectives(t)
        x = t.detach().to(dev) if t.device != dev else t.data
        dist.broadcast(x, src=0)
        if x is not t.data:
            t.data.copy_(x)


def shard(n: int) -> tuple[int, int]:
    """This rank's contiguous share [start, stop) of n rows (equal shares but the last)."""
    if not active():
        return 0, n
    per = -(-n // world_size())
    start = min(n, rank() * per)
    return start, min(n, start + per)


def gather_rows(part: torch.Tensor, n: int) -> torch.Tensor:
    """The shards (from `shard(n)`) of every rank, concatenated in rank order: the n rows in dataset order."""
    if not active():
        return part
    import torch.distributed as dist
    per = -(-n // world_size())
    dev = _device_for_collectives(part)
    padded = torch.zeros((per, *part.shape[1:]), dtype=part.dtype, device=dev)
    padded[:part.shape[0]] = part.to(dev)
    out = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(out, padded)
    return torch.cat(out)[:n].to(part.device)


_SHADOWS: dict[str, Path] = {}
SHADOW_PREFIX = ".rank"  # RUN/.rank1/, ...: another rank's copy of the run folder while the run lasts


def shadow(folder: Path) -> Path:
    """The folder this rank writes for the run folder `folder` (made and locked by rank 0): the folder itself on rank
    0; on rank k > 0 `folder/.rank<k>/`, a copy of the folder as it was before any rank went on (made again at each
    start, so a copy left by a killed process is replaced; removed when the process ends)."""
    if not active():
        return folder
    key = os.path.realpath(folder)
    if key in _SHADOWS:
        return _SHADOWS[key]
    barrier()  # rank 0 has made (and locked) the folder
    if rank() == 0:
        own = folder
    else:
        own = folder / f"{SHADOW_PREFIX}{rank()}"
        shutil.rmtree(own, ignore_errors=True)
        shutil.copytree(folder, own, symlinks=True,
                        ignore=shutil.ignore_patterns(".fewlabels.lock", f"{SHADOW_PREFIX}*"))
        atexit.register(shutil.rmtree, own, True)
    barrier()  # every copy is made before rank 0 writes anything
    _SHADOWS[key] = own
    return own
