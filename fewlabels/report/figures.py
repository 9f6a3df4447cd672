"""The figures of the HTML run report, as PNG bytes: learning curves, confusion matrix, reliability diagram, and
image thumbnails (PIL: many small images, without matplotlib's cost per axes)."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from . import _plt

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


def _png(fig: Any) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def learning_curves(histories: dict[str, list[dict]]) -> bytes:
    """Training loss (left) and accuracy (right) per epoch, one line per history (a run, a round, a mode); one
    history shows its validation (solid) and test (dashed) accuracy."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
    single = len(histories) == 1
    for i, (name, hist) in enumerate(histories.items()):
        color = COLORS[i % len(COLORS)]
        pts = [(h["epoch"], h["train_loss"]) for h in hist if h.get("train_loss") is not None and "epoch" in h]
        if pts:
            ax1.plot(*zip(*pts), color=color, label=name)
        for key, style in (("val_acc", "-"), ("test_acc", "--")):
            pts = [(h["epoch"], h[key]) for h in hist if h.get(key) is not None and "epoch" in h]
            if pts and (single or key == "val_acc" or not any(h.get("val_acc") is not None for h in hist)):
                label = (key.replace("_acc", " accuracy") if single else f"{name} {key.replace('_acc', '')}")
                ax2.plot(*zip(*pts), style, color=COLORS[(i + (key == "test_acc")) % len(COLORS)] if single else color,
                         marker="o" if len(pts) < 12 else None, markersize=3, label=label)
    ax1.set(xlabel="epoch", ylabel="training loss", title="training loss")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def confusion_heatmap(cm: list[list[int]], classes: list[str]) -> bytes:
    """Rows: true class, columns: predicted class; each row coloured by its share of the class's images (so that a
    small class's mistakes show as clearly as a large one's), counts written in the cells when they fit."""
    plt = _plt()
    m = np.asarray(cm, dtype=float)
    k = len(classes)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    size = min(9.0, max(3.6, 0.42 * k + 1.6))
    fig, ax = plt.subplots(figsize=(size, size * 0.88))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if k <= 25:
        ax.set_xticks(range(k), [_short(c) for c in classes], rotation=90 if k > 10 else 0, fontsize=8)
        ax.set_yticks(range(k), [_short(c) for c in classes], fontsize=8)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7 if k > 12 else 8,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted class", ylabel="true class")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    return _png(fig)


def _short(name: str, n: int = 12) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def reliability_diagram(rows: list[dict], ece: float | None, bins: int) -> bytes:
    """Accuracy per confidence bin (bars) against the diagonal of perfect calibration, the gap to each bin's mean
    confidence shaded; below, how many images fall in each bin."""
    plt = _plt()
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(4.6, 4.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = 1 / max(1, bins)
    for r in rows:
        if not r.get("count"):
            continue
        mid = (r["lo"] + r["hi"]) / 2
        ax.bar(mid, r["accuracy"], width=width * 0.95, color="tab:blue", edgecolor="white")
        lo, hi = sorted((r["accuracy"], r["confidence"]))
        ax.bar(mid, hi - lo, bottom=lo, width=width * 0.95, color="tab:red", alpha=0.3, edgecolor="tab:red",
               hatch="//", linewidth=0.5)
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy",
           title=f"ECE {ece:.4f} ({bins} bins)" if ece is not None and math.isfinite(ece) else "reliability")
    ax.grid(alpha=0.3)
    axn.bar([(r["lo"] + r["hi"]) / 2 for r in rows], [r.get("count") or 0 for r in rows], width=width * 0.95,
            color="tab:gray")
    axn.set(xlabel="confidence (top softmax probability)", ylabel="images")
    fig.tight_layout()
    return _png(fig)


def thumbnail(image: Any, lo: int = 48, hi: int = 96) -> bytes:
    """One uint8 (C, H, W) image as a PNG, its longer side scaled into [lo, hi] pixels (nearest neighbour up, so
    that an 8x8 digit stays sharp; bilinear down)."""
    from PIL import Image

    a = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
    a = a[0] if a.shape[0] == 1 else a[:3].transpose(1, 2, 0)
    img = Image.fromarray(np.ascontiguousarray(a))
    side = max(img.size)
    if side < lo:
        f = math.ceil(lo / side)
        img = img.resize((img.size[0] * f, img.size[1] * f), Image.NEAREST)
    elif side > hi:
        f = hi / side
        img = img.resize((max(1, round(img.size[0] * f)), max(1, round(img.size[1] * f))), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
