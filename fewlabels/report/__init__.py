"""Plots for run folders (matplotlib, headless) and the HTML run report (report.page, `fewlabels report`)."""

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
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_run_report(run_dir: Path, log=print, data: tuple | None = None) -> Path | None:
    """RUN/report.html at the end of a run (see report.page); `data`: the run's (dataset, split), already loaded,
    so that they are not loaded again. A report that cannot be built never fails the finished run: one warning line
    instead, and None."""
    try:
        from .page import write_report

        return write_report(Path(run_dir), data=data, device="auto")
    except Exception as e:  # noqa: BLE001 - the run is done; its report is a convenience
        log(f"warning: the run's report was not written ({type(e).__name__}: {e}); `fewlabels report {run_dir}` "
            f"tries again")
        return None
