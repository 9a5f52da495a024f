"""PNG plots for reports: training curves, per-model AUC with error bars, gain against cost."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curves(histories: dict[str, list[dict]], path: str | Path, title: str) -> Path:
    """Valid AUC and train loss per epoch, one line per run label."""
    fig, (ax_auc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, history in histories.items():
        epochs = [h["epoch"] for h in history]
        ax_auc.plot(epochs, [h["valid_auc"] for h in history], marker="o", label=label)
        ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label=label)
    ax_auc.set(xlabel="epoch", ylabel="valid AUC", title=title)
    ax_loss.set(xlabel="epoch", ylabel="train logloss", title="training loss")
    ax_auc.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_auc_bars(means: dict[str, float], stds: dict[str, float], path: str | Path,
                  title: str) -> Path:
    """Mean test AUC per model with ±1 std error bars."""
    labels = list(means)
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(labels)), 3.6))
    ax.bar(labels, [means[k] for k in labels], yerr=[stds.get(k, 0) for k in labels], capsize=4,
           color="#4c72b0")
    low = min(means[k] - stds.get(k, 0) for k in labels)
    high = max(means[k] + stds.get(k, 0) for k in labels)
    pad = max((high - low) * 0.3, 0.001)
    ax.set_ylim(low - pad, high + pad)
    ax.set(ylabel="test AUC (mean ± std over seeds)", title=title)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_gain_vs_cost(gains: dict[str, list[tuple[float, float, str]]], path: str | Path,
                      title: str) -> Path:
    """Per model, (average cost, mean AUC gain over plain) of every inference variant."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for model, points in gains.items():
        ax.scatter([c for c, _, _ in points], [g for _, g, _ in points], label=model)
        for cost, gain, variant in points:
            ax.annotate(variant, (cost, gain), fontsize=6, alpha=0.7)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set(xlabel="average forward passes per instance", ylabel="test AUC - plain", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_scale(series: dict[str, list[tuple[int, float, float]]], path: str | Path, title: str) -> Path:
    """Per series (tool, format, model, commit): encode seconds (left) and training rows/s (right)
    against the number of rows, both axes logarithmic on the left."""
    fig, (ax_encode, ax_train) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, points in series.items():
        points = sorted(points)
        ax_encode.plot([n for n, _, _ in points], [e for _, e, _ in points], marker="o", label=label)
        ax_train.plot([n for n, _, _ in points], [t for _, _, t in points], marker="o", label=label)
    ax_encode.set(xlabel="rows", ylabel="encode seconds", title=title, xscale="log", yscale="log")
    ax_train.set(xlabel="rows", ylabel="training rows/s (one epoch)", title="training throughput",
                 xscale="log", ylim=(0, None))
    ax_encode.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


LINE_STYLES = ("-", "--", ":", "-.")


def field_styles(count: int) -> list[tuple[tuple[float, ...], str]]:
    """(colour, line style) per field, all distinct up to 40 fields: the 10 tab10 colours, then
    the same colours dashed, dotted, dash-dotted (matplotlib's cycle repeats after 10)."""
    colours = plt.get_cmap("tab10").colors
    return [(tuple(colours[i % 10]), LINE_STYLES[(i // 10) % len(LINE_STYLES)]) for i in range(count)]


def plot_field_trajectories(trajectory: list[dict], path: str | Path, title: str) -> Path:
    """Per field: the loss weight (left) and the reconstruction loss (right) over steps, with
    one legend naming every field beside both panels."""
    fig, (ax_weight, ax_loss) = plt.subplots(1, 2, figsize=(12.5, 4.5))
    steps = [t["step"] for t in trajectory]
    names = list(trajectory[0]["weight"])
    for name, (colour, style) in zip(names, field_styles(len(names))):
        ax_weight.plot(steps, [t["weight"].get(name) for t in trajectory], label=name,
                       color=colour, linestyle=style)
        points = [(t["step"], t["field_loss"][name]) for t in trajectory if name in t["field_loss"]]
        ax_loss.plot([s for s, _ in points], [v for _, v in points], color=colour, linestyle=style)
    ax_weight.set(xlabel="step", ylabel="loss weight", title=title, yscale="log")
    ax_loss.set(xlabel="step", ylabel="reconstruction loss ℓ_f", title="per-field loss", yscale="log")
    fig.legend(loc="center right", fontsize=7, ncol=1 + len(names) // 25, title="field")
    fig.tight_layout(rect=(0, 0, 0.86 if len(names) < 25 else 0.78, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
