"""The options of the one training loop, in groups; `TrainConfig` holds them all (`fit()` takes it)."""

from __future__ import annotations

import torch

from ..config import Options, group, opt
from ..utils import pick_device


@group
class Steps:
    """How long a run is and what a step sees."""

    epochs: int = opt(30, "passes over the training images", ge=1)
    batch_size: int = opt(256, "images per step (the global batch: under torchrun each of the N processes trains on "
                          "1/N of every batch and the gradients are averaged, so --batch-size and --lr mean what they "
                          "mean in one process)", ge=1)
    min_steps_per_epoch: int = opt(10, "a training set smaller than this many batches is passed over several times "
                                   "(reshuffled) per epoch, so that tiny labelled sets still get enough steps (200 "
                                   "labels at batch size 256 are one step otherwise); 0 = one pass", ge=0, le=100_000)
    sampler: str = opt("uniform", "imbalanced classes: balanced draws each epoch's batches with replacement so that "
                       "every class is equally likely (same steps per epoch; with --unlabelled-ratio only the "
                       "labelled part); uniform = shuffled passes. Use this or --class-weights, not both",
                       choices=("uniform", "balanced"))
    unlabelled_ratio: float = opt(0.0, "with pseudo-labelled images: pseudo-labelled images per labelled image in "
                                  "each batch (0 = one shuffled pool)", ge=0)
    eval_every: int = opt(1, "evaluate every N epochs (the last epoch always)", ge=1)


@group
class Optim:
    """The optimiser, its schedule and weight averaging."""

    optimizer: str = opt("sgd", "sgd (Nesterov momentum) or adamw", choices=("sgd", "adamw"))
    lr: float = opt(0.1, "peak learning rate (for the head when per-layer rates are used)", gt=0)
    momentum: float = opt(0.9, "SGD momentum / AdamW beta1", ge=0, lt=1)
    nesterov: bool = opt(True, "Nesterov momentum for SGD")
    weight_decay: float = opt(5e-4, "weight decay; never applied to norm and bias parameters", ge=0)
    norm_bias_lr: float = opt(1.0, "learning-rate multiplier for the biases of normalisation layers (airbench's "
                              "bias_scaler: 64); 1 = the same rate as the other parameters", gt=0)
    schedule: str = opt("cosine", "cosine: warm-up then cosine to 0; onecycle: warm-up then linear to 0; constant",
                        choices=("cosine", "onecycle", "constant"))
    warmup_epochs: float = opt(1.0, "linear learning-rate warm-up, in epochs (at most half the run)", ge=0)
    ema: float = opt(0.0, "weight EMA decay per step (e.g. 0.999), reached after a warm-up; 0 = off. Evaluation "
                     "and checkpoints use the EMA", ge=0, lt=1)
    lookahead: float = opt(0.0, "airbench's lookahead: every `lookahead_every` steps the weights are pulled to a slow "
                           "copy (EMA with this per-step decay, ramped up as progress³) and the run ends on the slow "
                           "copy; airbench uses 0.95. 0 = off", ge=0, lt=1)
    lookahead_every: int = opt(5, "steps between lookahead updates", ge=1)
    whiten_stem: bool = opt(False, "start the first conv from the data: patch-whitening filters computed on up to "
                            "5,000 training images (airbench; compact CNNs only; the -p2 models then freeze them)")


@group
class Loss:
    """What the loss counts."""

    label_smoothing: float = opt(0.0, "label smoothing ε folded into the targets", ge=0, lt=1)
    class_weights: str = opt("none", "imbalanced classes: balanced weights each image's loss by n / (classes · "
                             "images of its class), counted over the labelled and pseudo-labelled images (sklearn's "
                             "compute_class_weight; the mean weight stays 1); none = every image counts the same",
                             choices=("none", "balanced"))


@group
class Augment:
    """Augmentation of the training images."""

    augment: str = opt("weak", "augmentation preset: none, weak (crop+flip), strong (weak+RandAugment+Cutout)",
                       choices=("none", "weak", "strong"))
    hflip: bool | None = opt(None, "random horizontal flips; default: on, except for digit sets (digits, mnist, svhn) "
                             "where a mirror image is not the same class")
    padding: int | None = opt(None, "pad-and-crop translation range in pixels for weak/strong (default: image "
                              "size // 8)", ge=0)
    alternating_flip: bool = opt(False, "airbench's alternating flip: a random half of the images is mirrored in even "
                                 "epochs and the other half in odd ones, instead of a coin per image and epoch")
    cutout: int | None = opt(None, "Cutout side in pixels for the strong preset (default: image size // 2; 0 = off)",
                             ge=0)
    ra_magnitude: float = opt(9.0, "RandAugment magnitude M (0-10) for the strong preset", ge=0, le=10)
    ra_num_ops: int = opt(2, "RandAugment ops per image for the strong preset", ge=0)
    mixup: float = opt(0.0, "MixUp Beta(α, α); 0 = off", ge=0)
    cutmix: float = opt(0.0, "CutMix Beta(α, α); 0 = off", ge=0)
    mix_prob: float = opt(1.0, "probability of mixing a batch when MixUp/CutMix are on", ge=0, le=1)
    mix_per_image: bool = opt(False, "draw the MixUp/CutMix λ per image instead of per batch")
    progressive_resize: int | None = opt(None, "progressive resizing (fast.ai, FFCV): the first epochs train on "
                                         "images scaled down to this side (the shorter one; after augmentation), "
                                         "growing in steps of 4 px to the full size by --progressive-end of the "
                                         "epochs; smaller steps are cheaper, so a budget buys more epochs. "
                                         "Evaluation is at full size; selftrain's fine-tune trains at full size",
                                         ge=8)
    progressive_end: float = opt(0.75, "with --progressive-resize: the share of the epochs after which every "
                                 "epoch trains at full size", gt=0, le=1)


@group
class TTA:
    """Test-time augmentation at evaluation."""

    tta_flip: bool = opt(False, "average predictions over the image and its mirror at evaluation")
    tta_translate: int = opt(0, "also average over the image shifted by ± this many pixels (airbench's multi-crop "
                             "test-time augmentation: weight 1/2 unshifted, 1/4 each shift); 0 = off", ge=0)


@group
class Device:
    """Where it runs."""

    device: str = opt("auto", "auto, cpu, cuda, cuda:1, ...", resume="change")


@group
class Compute:
    """How the arithmetic is done."""

    precision: str = opt("auto", "auto (bf16 where the hardware has it), bf16, fp16, fp32",
                         choices=("auto", "bf16", "fp16", "fp32"))
    channels_last: bool = opt(True, "channels_last memory format (faster convolutions on CPU and GPU)")
    eval_batch_size: int = opt(256, "images per step at evaluation (memory only: the predictions are the same at "
                               "any batch size)", ge=1, resume="change")
    micro_batch: int | None = opt(None, "memory: run each training step's batch through the model in chunks of this "
                                  "many images and add up their gradients, so a step still averages --batch-size "
                                  "images (only BatchNorm sees the chunk); evaluation and labelling batches are capped "
                                  "at it too. 0 = the whole batch. Default (none): on the CPU, images larger than 32 x "
                                  "32 go in chunks that need no more activation memory than a batch of 32 x 32 "
                                  "images (batch x 1024 / pixels per image, at least 32: 64 at 64 x 64 px); the whole "
                                  "batch otherwise", ge=0, resume="change")


@group
class Seed:
    """Randomness."""

    seed: int = opt(0, "random seed (model init, batches, augmentation)", ge=0, le=2**31 - 1)


@group
class Logs:
    """What a training run shows while it runs (fewlabels/console.py)."""

    verbose: bool = opt(False, "print every epoch's line (default: a progress bar on a terminal, and one epoch line at "
                        "most every 30 s plus each phase's last)", short="-v", resume="change")
    tensorboard: bool = opt(False, "also write TensorBoard event files into RUN/tensorboard (losses, accuracies, "
                            "learning rate, per round for selftrain, augmented and pseudo-labelled image grids); "
                            "needs `pip install fewlabels[tensorboard]`", resume="change")


@group
class Parallel:
    """Several processes (torchrun; fewlabels/distributed.py)."""

    sync_bn: bool = opt(False, "under torchrun: BatchNorm statistics over the whole batch, synchronised across the "
                        "processes (default: each process's share of it)")


TRAINING = (Steps, Optim, Loss, Augment, TTA, Device, Compute, Seed, Logs, Parallel)


class TrainConfig(Options):
    """Everything `fit()` needs, e.g. `TrainConfig(epochs=5, lr=0.05)`; a command hands over its own groups with
    `TrainConfig.of(cfg)`."""

    groups = TRAINING


def auto_micro_batch(batch_size: int, image_shape: tuple[int, ...], device: str) -> int:
    """--micro-batch's default (0 = the whole batch): on the CPU, where a laptop's memory is the limit, images larger
    than 32 x 32 go in chunks of batch x 1024 / (H x W) images (at least 32), so that a step's activations stay what a
    batch of 32 x 32 images needs; on a GPU, and for feature rows, the whole batch."""
    pixels = image_shape[-1] * image_shape[-2] if len(image_shape) >= 3 else 0
    if device != "cpu" or pixels <= 32 * 32:
        return 0
    chunk = max(32, batch_size * 1024 // pixels)
    return chunk if chunk < batch_size else 0


def micro_batch(cfg: Options | dict, image_shape: tuple[int, ...] | torch.Size) -> int:
    """The chunk size a step's batch goes through the model in (0 = the whole batch): --micro-batch, or its default
    for these images (auto_micro_batch). cfg: options, or a run's saved config.yaml as a dict."""
    get = cfg.get if isinstance(cfg, dict) else lambda k: getattr(cfg, k, None)
    micro = get("micro_batch")
    if micro is not None:
        return int(micro)
    device = pick_device(get("device") or "auto").type
    return auto_micro_batch(int(get("batch_size") or 256), tuple(image_shape), device)


def eval_batch(cfg: Options | dict, image_shape: tuple[int, ...] | torch.Size | None = None, default: int = 256) -> int:
    """Images per forward pass when predicting (evaluation, pool labelling, the report): --eval-batch-size, and never
    more than the training chunk (micro_batch, for these images when image_shape is given), so that the model sees at
    most that many images at once anywhere. cfg: a command's options, or a run's saved config.yaml as a dict."""
    get = cfg.get if isinstance(cfg, dict) else lambda k: getattr(cfg, k, None)
    size = int(get("eval_batch_size") or default)
    micro = micro_batch(cfg, image_shape) if image_shape is not None else int(get("micro_batch") or 0)
    return min(size, micro) if micro > 0 else size
