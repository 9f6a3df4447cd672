"""FC vs CNN: the data transforms that show what convolution assumes about images, and model matching.

Three ways to train and test the same pair of models (a fully connected net and a CNN of about the same size):

- standard: the images as they are;
- shifted ("monkey on the left, monkey on the right"): each image on a canvas twice as wide, in its left half for
  training and its right half for testing. A CNN applies the same filters everywhere and max-pools globally, so what
  it learned on the left works on the right; an FC net has never seen anything in the right half's pixels;
- permuted: one fixed random permutation of the pixel positions, the same for training and test. An FC net has no
  notion of neighbouring pixels, so for it this is the same problem (its first layer's columns are just permuted);
  a CNN's 3×3 filters and pooling assume that neighbours belong together, which the permutation destroys.

All transforms are pure functions of uint8 (N, C, H, W) images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

Transform = Callable[[torch.Tensor], torch.Tensor]


def place(images: torch.Tensor, side: str, width: int | None = None) -> torch.Tensor:
    """images (N, C, H, W) on a blank (zero) canvas (N, C, H, width), flush with its left or right edge.

    width: the canvas width, default 2W (the two halves do not overlap)."""
    n, c, h, w = images.shape
    width = 2 * w if width is None else width
    if width < w:
        raise ValueError(f"canvas width {width} is narrower than the images ({w})")
    if side not in ("left", "right"):
        raise ValueError(f"side must be left or right, got {side!r}")
    canvas = images.new_zeros(n, c, h, width)
    x0 = 0 if side == "left" else width - w
    canvas[..., x0:x0 + w] = images
    return canvas


def place_left(images: torch.Tensor, width: int | None = None) -> torch.Tensor:
    return place(images, "left", width)


def place_right(images: torch.Tensor, width: int | None = None) -> torch.Tensor:
    return place(images, "right", width)


def pixel_permutation(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A fixed random permutation (H·W,) of the pixel positions, the same for every call with the same seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(height * width, generator=g)


def permute_pixels(images: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """images (N, C, H, W) with their pixel positions shuffled by `perm` (H·W,): output pixel j is input pixel
    perm[j], every channel moved together (a pixel keeps its colour)."""
    n, c, h, w = images.shape
    if perm.shape != (h * w,):
        raise ValueError(f"the permutation has {perm.numel()} positions but the images have {h}×{w}")
    return images.flatten(2)[:, :, perm].reshape(n, c, h, w)


def conditions(height: int, width: int, seed: int = 0) -> dict[str, tuple[Transform, dict[str, Transform]]]:
    """For each condition: (the transform of the training images, {test name: transform of the test images}).
    The first test of a condition is its headline number; `shifted` also tests on the training side (left), which
    tells "cannot learn on the canvas" apart from "cannot transfer to the other side"."""
    perm = pixel_permutation(height, width, seed)

    def same(x: torch.Tensor) -> torch.Tensor:
        return x

    def permute(x: torch.Tensor) -> torch.Tensor:
        return permute_pixels(x, perm)

    return {
        "standard": (same, {"standard": same}),
        "shifted": (place_left, {"shifted": place_right, "shifted_seen_side": place_left}),
        "permuted": (permute, {"permuted": permute}),
    }


CONDITIONS = ("standard", "shifted", "permuted")
CONDITION_LABELS = {"standard": "standard", "shifted": "train left,\ntest right", "permuted": "pixels permuted"}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_pair(cnn: str, num_classes: int, in_chans: int, image_hw: tuple[int, int], *, mlp_layers: int = 2,
                 seed: int = 0) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """(mlp, cnn, info): a CNN and an MLP with `mlp_layers` equal hidden layers whose width gives about the CNN's
    parameter count for images of in_chans × image_hw (the MLP's first layer grows with the image; the CNN's
    parameters do not depend on the image size). Both initialised from `seed`."""
    from ..models import create_model, mlp_width_for_params

    torch.manual_seed(seed)
    cnn_model = create_model(cnn, num_classes=num_classes, in_chans=in_chans)
    target = count_params(cnn_model)
    width = mlp_width_for_params(target, in_chans * image_hw[0] * image_hw[1], num_classes, mlp_layers)
    kwargs = {"image_size": list(image_hw), "hidden": [width] * mlp_layers}
    torch.manual_seed(seed)
    mlp_model = create_model("mlp", num_classes=num_classes, in_chans=in_chans, **kwargs)
    info = {"cnn": cnn, "cnn_params": target, "mlp_hidden": kwargs["hidden"], "mlp_params": count_params(mlp_model),
            "mlp_kwargs": kwargs}
    return mlp_model, cnn_model, info


def fc_vs_cnn_markdown(result: dict[str, Any]) -> str:
    """Test accuracy of both models under each condition, with the parameter counts."""
    conds = [c for c in CONDITIONS if c in result["cnn"]]
    head = ["model", "parameters", *conds]
    if "shifted_seen_side" in result["cnn"]:
        head.append("shifted, tested on the training side")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, name in (("fc", "FC (mlp)"), ("cnn", result["params"]["cnn_name"])):
        params = result["params"][key]
        p = " / ".join(f"{v:,}" for v in dict.fromkeys(params.values())) if isinstance(params, dict) else f"{params:,}"
        cells = [name, p, *[f"{100 * result[key][c]:.2f}%" for c in conds]]
        if "shifted_seen_side" in result[key]:
            cells.append(f"{100 * result[key]['shifted_seen_side']:.2f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_fc_vs_cnn(result: dict[str, Any], path: Any, title: str = "", ax: Any = None) -> None:
    """Grouped bars: one group per condition, one bar per model (test accuracy)."""
    from ..report import _plt

    plt = _plt()
    conds = [c for c in CONDITIONS if c in result["cnn"]]
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6, 4))
    xs = range(len(conds))
    for j, (key, name) in enumerate((("fc", "FC (mlp)"), ("cnn", result["params"]["cnn_name"]))):
        ys = [result[key][c] for c in conds]
        bars = ax.bar([x + (j - 0.5) * 0.38 for x in xs], ys, width=0.38, label=name)
        ax.bar_label(bars, labels=[f"{100 * y:.1f}" for y in ys], fontsize=8, padding=2)
    ax.set_xticks(list(xs), [CONDITION_LABELS[c] for c in conds])
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.2)  # headroom for the legend above bars near 100%
    ax.legend(fontsize=8, loc="upper right", ncol=2)
    if title:
        ax.set_title(title)
    if own:
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
