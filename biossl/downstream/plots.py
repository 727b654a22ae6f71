"""The label-efficiency plot: metric against label fraction, one line per method with a ±sd band.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend change, no display
needed) and written atomically as PNG.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from biossl.io import atomic_path

METRIC_LABELS = {"c_index": "c-index", "macro_auroc": "macro AUROC", "balanced_accuracy": "balanced accuracy"}


def plot_label_efficiency(section: Mapping[str, Any], path: str | Path, *, metric: str | None = None,
                          title: str = "") -> Path:
    """Draw the ``label_efficiency`` section of a ``biossl finetune`` report as a PNG.

    x: label fraction (log axis, ticks at the fractions, as percentages); y: mean of ``metric``
    (default the section's headline metric) over folds x seeds, with a band of ±1 sd. Fractions where
    the metric is undefined are skipped.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = metric or str(section["metric"])
    fractions = [float(f) for f in section["fractions"]]
    fig = Figure(figsize=(8.0, 4.2), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, by_fraction in section["methods"].items():
        xs, means, sds = [], [], []
        for fraction in fractions:
            entry = by_fraction.get(f"{fraction:g}")
            stats = entry["summary"][metric] if entry else None
            if stats is None or stats["mean"] is None:
                continue
            xs.append(fraction)
            means.append(stats["mean"])
            sds.append(stats["sd"] or 0.0)
        if not xs:
            continue
        (line,) = ax.plot(xs, means, marker="o", label=name)
        ax.fill_between(xs, [m - s for m, s in zip(means, sds)], [m + s for m, s in zip(means, sds)],
                        color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xscale("log")
    ax.set_xticks(fractions)
    ax.set_xticklabels([f"{100 * f:g}%" for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("labelled training patients (fraction of each training fold)")
    ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)}, mean ± sd")
    if metric in ("c_index", "macro_auroc"):
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_title(title or "label efficiency", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


__all__ = ["plot_label_efficiency"]
