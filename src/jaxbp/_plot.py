"""PNG plots of a training run, written atomically; matplotlib is imported only when plotting."""

from __future__ import annotations

import os
from pathlib import Path


def plot_history(history: dict, path: str | os.PathLike, *, title: str = "") -> Path:
    """Loss (train and eval) and eval accuracy per epoch, side by side, as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")  # files only; works with no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from jaxbp.checkpoint import atomic_write

    epochs = range(1, len(history["loss"]) + 1)
    panels = 2 if history.get("eval_accuracy") else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6), squeeze=False)
    ax = axes[0][0]
    ax.plot(epochs, history["loss"], label="train")
    if history.get("eval_loss"):
        ax.plot(epochs, history["eval_loss"], label="eval")
    ax.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    ax.legend()
    if panels == 2:
        acc = axes[0][1]
        acc.plot(epochs, history["eval_accuracy"], color="C1")
        acc.set(
            xlabel="epoch",
            ylabel="accuracy",
            title=f"eval accuracy (last {history['eval_accuracy'][-1]:.2%})",
        )
        acc.grid(alpha=0.3)
    for panel in axes[0]:
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return Path(path)
