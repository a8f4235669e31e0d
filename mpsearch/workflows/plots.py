"""Study figures: the measured metric against average bits and against MiB."""

from __future__ import annotations

import numpy as np


def _series(mixed) -> list[tuple[str, str, object]]:
    """(estimator, solvers, rows): solvers whose plans measured the same at every budget share one line."""
    out = []
    for est, part in sorted(mixed.groupby("estimator"), key=lambda kv: kv[0]):
        seen: dict[tuple, list[str]] = {}
        rows: dict[tuple, object] = {}
        for sol, sub in sorted(part.groupby("solver"), key=lambda kv: (kv[0] != "ilp", kv[0])):
            sub = sub.sort_values("budget")
            key = tuple(np.round(sub[["budget", "avg_bits", "metric"]].to_numpy(float), 6).ravel())
            seen.setdefault(key, []).append(sol)
            rows.setdefault(key, sub)
        out += [(est, "/".join(sols), rows[key]) for key, sols in seen.items()]
    return out


def plot_study(frame, *, metric_name: str = "metric", reference: float | None = None, title: str = ""):
    """One line per estimator and solver in each panel; uniform plans as labelled squares.

    Solvers whose plans measured the same at every budget share a line (labelled
    ``est + ilp/dp/...``); one colour per estimator, one line style per solver group.
    ``frame`` is a :class:`~mpsearch.workflows.study.Study` results table; ``reference`` (e.g. the fp32
    metric) is drawn as a dashed line. With a reference, the metric axis is zoomed to the
    range near it, and the number of points below the axis is said in the corner.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ok = frame[np.isfinite(frame["metric"].astype(float))]
    mixed = ok[ok["estimator"] != "uniform"]
    uniform = ok[ok["estimator"] == "uniform"]
    series = _series(mixed)
    estimators = sorted({est for est, _, _ in series})
    colours = plt.get_cmap("tab20" if len(estimators) > 10 else "tab10")
    styles, markers = ["-", "--", ":", "-."], "os^vD<>ph*"
    fig, axes = plt.subplots(1, 2, figsize=(13.5 if len(series) > 6 else 11, 4.6))
    values = ok["metric"].astype(float)
    low = float(values.min())
    if reference is not None and len(mixed):  # zoom on the interesting range: most mixed plans and the reference
        low = max(low, float(np.percentile(mixed["metric"].astype(float), 10)) - 1.0)
    for ax, x, label in ((axes[0], "avg_bits", "average bits per weight"), (axes[1], "mib", "MiB (quantized units)")):
        group_no: dict[str, int] = {}
        for est, sols, part in series:
            k = group_no[est] = group_no.get(est, -1) + 1
            ax.plot(part[x], part["metric"], linestyle=styles[k % len(styles)], marker=markers[estimators.index(est) % len(markers)],
                    color=colours(estimators.index(est)), label=f"{est} + {sols}", alpha=0.85, markersize=5)
        xmax = float(mixed[x].max()) * 1.25 if len(mixed) else None
        for _, row in uniform.iterrows():
            if xmax is not None and row[x] > xmax:
                ax.annotate(f"{row['solver']} ({row['metric']:.2f}) off the axis", (0.02, 0.02), xycoords="axes fraction", fontsize=7)
                continue
            ax.plot([row[x]], [row["metric"]], "s", color="black", markersize=7)
            ax.annotate(row["solver"], (row[x], row["metric"]), textcoords="offset points", xytext=(4, -10), fontsize=8)
        if reference is not None:
            ax.axhline(reference, color="0.4", linestyle="--", linewidth=1, label=f"fp32 ({reference:.2f})")
        below = int((values < low).sum())
        if below:
            top = max(float(values.max()), float(reference) if reference is not None else -np.inf)
            ax.set_ylim(low, top + 0.05 * (top - low))
            ax.annotate(f"{below} point(s) below the axis", (0.98, 0.02), xycoords="axes fraction", ha="right", fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel(metric_name)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if len(series) > 6:
        fig.legend(handles, labels, fontsize="x-small", loc="center right", ncol=1 if len(labels) <= 24 else 2)
        fig.tight_layout(rect=(0, 0, 0.8 if len(labels) <= 24 else 0.68, 0.95))
    else:
        axes[0].legend(fontsize="small", loc="lower right")
        fig.tight_layout(rect=(0, 0, 1, 0.95))
    if title:
        fig.suptitle(title)
    return fig
