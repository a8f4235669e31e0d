"""Study figures: the measured metric against average bits and against MiB."""

from __future__ import annotations

import numpy as np


def plot_study(frame, *, metric_name: str = "metric", reference: float | None = None, title: str = ""):
    """One line per (estimator, solver) in each panel; uniform plans as labelled squares.

    ``frame`` is a :class:`~mpsearch.study.Study` results table; ``reference`` (e.g. the fp32
    metric) is drawn as a dashed line.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ok = frame[np.isfinite(frame["metric"].astype(float))]
    mixed = ok[ok["estimator"] != "uniform"]
    uniform = ok[ok["estimator"] == "uniform"]
    markers = "os^vD<>ph*"
    for ax, x, label in ((axes[0], "avg_bits", "average bits per weight"), (axes[1], "mib", "MiB (quantized units)")):
        for i, ((est, sol), part) in enumerate(sorted(mixed.groupby(["estimator", "solver"]), key=lambda kv: kv[0])):
            part = part.sort_values(x)
            ax.plot(part[x], part["metric"], marker=markers[i % len(markers)], label=f"{est} + {sol}", alpha=0.85)
        for _, row in uniform.iterrows():
            ax.plot([row[x]], [row["metric"]], "s", color="black", markersize=7)
            ax.annotate(row["solver"], (row[x], row["metric"]), textcoords="offset points", xytext=(4, -10), fontsize=8)
        if reference is not None:
            ax.axhline(reference, color="0.4", linestyle="--", linewidth=1, label=f"fp32 ({reference:.2f})")
        ax.set_xlabel(label)
        ax.set_ylabel(metric_name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small", loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
