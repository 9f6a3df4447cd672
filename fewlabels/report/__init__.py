"""Plots for run folders (matplotlib, headless) and the figures of the HTML run report
(report.figures; the page: methods/report_page.py)."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_history(history: list[dict], path: Path) -> None:
    """Learning curve: training loss and every *_acc metric per epoch."""
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, ax1 = plt.subplots(figsize=(6, 4))
    ax1.plot(epochs, [h.get("train_loss", float("nan")) for h in history], color="tab:gray", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss")
    ax2 = ax1.twinx()
    for k in sorted({k for h in history for k in h if k.endswith("_acc")}):
        ax2.plot([h["epoch"] for h in history if k in h], [h[k] for h in history if k in h], label=k)
    ax2.set_ylabel("accuracy")
    fig.legend(loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_lines(series: dict[str, tuple[list, list]], path: Path, xlabel: str, ylabel: str, title: str = "") -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    if all(isinstance(x, int) for xs, _ in series.values() for x in xs):  # rounds, epochs: no 0.25 ticks
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

