"""The drift report: a table of every column and, per drifted column, its baseline and
current bin (or category) shares on the same axes. Rendered as ``report.md`` and a
self-contained ``report.html`` by the cluster report's renderer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipelines.cluster.report import Block, _figure, _png
from pipelines.cluster.report import write_report as _write

_MAX_BARS = 30  # categories shown per plot (the most frequent on either side)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def shares_plot(column: str, plot: Mapping[str, Any]) -> bytes:
    """Baseline and current shares per PSI bin (continuous) or per category, side by side."""
    plt, fig, ax = _figure()
    b0 = np.asarray(plot["bins0"], np.float64)
    b1 = np.asarray(plot["bins1"], np.float64)
    s0, s1 = b0 / max(b0.sum(), 1), b1 / max(b1.sum(), 1)
    if "categories" in plot:
        labels = ["(null)" if k is None else str(k) for k in plot["categories"]]
        order = np.argsort(-(s0 + s1), kind="stable")[:_MAX_BARS]
        s0, s1, labels = s0[order], s1[order], [labels[i] for i in order]
    else:
        edges = plot["edges"]
        lows = ["-inf", *(f"{e:.3g}" for e in edges)]
        labels = [f">= {lo}" if lo != "-inf" else f"< {edges[0]:.3g}" if edges.size else "all" for lo in lows]
    x = np.arange(len(labels))
    ax.bar(x - 0.2, s0, 0.4, label="baseline")
    ax.bar(x + 0.2, s1, 0.4, label="current")
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("share of rows")
    ax.set_title(column)
    ax.legend()
    return _png(plt, fig)


def write_report(output: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` under ``output``; return their paths."""
    drifted = [r for r in rows if r["drifted"]]
    blocks: list[Block] = [
        ("h", 1, "Drift report"),
        ("p", f"{len(drifted)} of {len(rows)} column(s) drifted."),
        ("table", ["column", "kind", "baseline", "current", "psi", "ks", "ks p", "chi2", "null rate change",
                   "mean change", "std change", "loglik drop", "drifted", "reason"],
         [[r["column"], _fmt(r.get("kind")),
           f"{r.get('baseline_table')}@{r.get('baseline_version')}" if r.get("baseline_table") else "",
           f"{r['current_table']}@{r['current_version']}",
           *(_fmt(r.get(k)) for k in ("psi", "ks_statistic", "ks_pvalue", "chi2_statistic", "null_rate_change",
                                      "mean_change", "std_change", "loglik_drop")),
           "yes" if r["drifted"] else "no", r["reason"]] for r in rows]),
    ]
    plots = {}
    for i, r in enumerate(drifted):
        if r.get("_plot") is None:
            continue
        name = f"drift_{i:03d}"  # by position: a column name never becomes a path
        plots[name] = shares_plot(r["column"], r["_plot"])
        blocks.append(("img", f"{r['column']}: baseline vs current shares ({r['reason']})", name))
    return _write(output, blocks, plots, title="Drift report")
