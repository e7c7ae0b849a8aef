"""The cluster_eval report: PNG plots under ``plots/``, ``report.md`` and a
self-contained ``report.html`` (plots embedded as base64).

The report is built once as a list of blocks (heading, paragraph, table, image) and
rendered twice, so Markdown and HTML always say the same thing.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines import fs
from pipelines.cluster.select import METHOD_LABELS
from pipelines.cluster.sweep import METHODS

Block = tuple[Any, ...]


def preload() -> None:
    """Import matplotlib (headless) and scikit-learn's k-means now, on the calling thread.

    A run needs both later; imported at its start (about 1.8 s), their loading overlaps
    the session's background warm-up job (:func:`pipelines.spark.session`) instead of
    following the first Spark job.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import sklearn.cluster  # noqa: F401


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on clusters or CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    return plt, fig, ax


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def metric_plot(
    rows: Sequence[dict[str, Any]], series: Sequence[tuple[str, str]], chosen: dict[str, int | None], title: str,
    *, ylabel: str, error_key: str | None = None,
) -> bytes | None:
    """One metric (or two related ones) against k, with each chosen k marked."""
    from matplotlib.ticker import MaxNLocator

    plt, fig, ax = _figure()
    drawn = False
    for key, label in series:
        pts = [(r["k"], r[key], r.get(error_key) if error_key else None) for r in rows if r.get(key) is not None]
        if not pts:
            continue
        ks, vals, errs = zip(*pts, strict=True)
        if error_key:
            ax.errorbar(ks, vals, yerr=errs, marker="o", label=label, capsize=3)
        else:
            ax.plot(ks, vals, marker="o", label=label)
        pick = chosen.get(key)
        if pick is not None and pick in ks:
            ax.scatter([pick], [vals[ks.index(pick)]], s=180, facecolors="none", edgecolors="red", linewidths=2, zorder=5)
            # label towards the middle of the axis, so it stays clear of the edges and the title
            right = pick <= (min(ks) + max(ks)) / 2
            ax.annotate(f"chosen k={pick}", (pick, vals[ks.index(pick)]), textcoords="offset points",
                        xytext=(10 if right else -10, -14), ha="left" if right else "right", color="red")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("k")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(plt, fig)


def sizes_plot(sizes: Sequence[int], k: int, *, which: str) -> bytes:
    plt, fig, ax = _figure()
    ax.bar(range(len(sizes)), sizes, color="tab:blue")
    ax.set_xlabel("cluster")
    ax.set_ylabel("rows")
    ax.set_title(f"Cluster sizes at the {which} k={k}")
    ax.set_xticks(range(len(sizes)))
    return _png(plt, fig)


def pca_plot(x: np.ndarray, labels: np.ndarray, k: int, *, which: str) -> bytes | None:
    """2-D PCA (SVD of the centred sample) coloured by cluster."""
    if x.shape[0] < 2:
        return None
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    proj = centred @ vt[:2].T
    if proj.shape[1] == 1:
        proj = np.column_stack([proj[:, 0], np.zeros(len(proj))])
    explained = (s[:2] ** 2) / max((s**2).sum(), np.finfo(float).tiny)
    plt, fig, ax = _figure()
    sc = ax.scatter(proj[:, 0], proj[:, 1], c=labels, cmap="tab10", s=6, alpha=0.7)
    ax.legend(*sc.legend_elements(), title="cluster", loc="best", fontsize="small")
    ax.set_xlabel(f"PC1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({explained[1] if len(explained) > 1 else 0:.0%})")
    ax.set_title(f"Sample of {x.shape[0]} rows, coloured by cluster ({which} k={k})")
    return _png(plt, fig)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return " / ".join(str(x) for x in v)
    return str(v)


def build(
    *,
    rows: Sequence[dict[str, Any]],
    choice: dict[str, Any],
    method_seconds: dict[str, float],
    method_rows: dict[str, int],
    summary: dict[str, Any],
    plots: dict[str, bytes],
) -> list[Block]:
    """The report as blocks: ("h", level, text), ("p", text), ("table", header, rows), ("img", title, name)."""
    best = choice["best_k"]
    blocks: list[Block] = [("h", 1, "Cluster evaluation")]
    ds = summary.get("dataset", {})
    blocks.append(("p", f"Input: {ds.get('name')}. Rows used: {summary['counts'].get('rows_used')} of "
                        f"{summary['counts'].get('rows_input')}; features: {', '.join(summary['features'])}; "
                        f"scaling: {summary['scale']}; algorithm: {summary['algorithm']}."))
    if "true_k" in ds:
        verdict = "matches" if choice["recommended_k"] == ds["true_k"] else "does NOT match"
        blocks.append(("p", f"The built-in dataset has {ds['true_k']} clusters; the recommendation {verdict} it."))
    blocks.append(("h", 2, f"Recommendation: k = {choice['recommended_k']}"))
    blocks.append(("p", choice["explanation"]))
    for m, note in choice.get("notes", {}).items():
        blocks.append(("p", f"Note ({METHOD_LABELS[m]}): {note}."))
    for w in summary.get("warnings", []):
        blocks.append(("p", f"Warning: {w}"))
    for s in summary.get("skipped", []):
        blocks.append(("p", f"Skipped k={s['k']}: {s['reason']}."))
    fit = summary.get("fit", {})
    if fit.get("summary_rows"):
        blocks.append(("p", f"Fit: every k was started on the driver from a seeded sample of {fit['summary_rows']} rows "
                            "(k-means++ with restarts), then refined by Lloyd passes over all rows, every k in the "
                            f"same pass ({fit['passes']} passes over the data including the evaluation pass). "
                            "n_iter is the number of full-data passes of each k."))
    for which, k in (("recommended", choice["recommended_k"]), ("runner-up", choice.get("runner_up"))):
        prof = summary.get("profiles", {}).get(str(k))
        if not prof:
            continue
        blocks.append(("h", 3, f"Clusters at the {which} k = {k} (centres in the input's units)"))
        names = list(prof[0]["center"])
        blocks.append(("table", ["cluster", "size", "share", *names],
                       [[str(c["cluster"]), str(c["size"]), f"{c['share']:.1%}", *[_fmt(c["center"][n]) for n in names]]
                        for c in prof]))

    blocks.append(("h", 2, "Metrics per k"))
    cols = ["k", "inertia", "calinski_harabasz", "davies_bouldin", "silhouette_spark", "silhouette_sample",
            "log_likelihood", "bic", "aic", "gap", "gap_sk", "n_iter", "converged", "cluster_sizes", "fit_seconds",
            "eval_seconds"]
    cols = [c for c in cols if any(r.get(c) is not None for r in rows)]
    blocks.append(("table", cols, [[_fmt(r.get(c)) for c in cols] for r in rows]))
    blocks.append(("p", "silhouette_spark is Spark's ClusteringEvaluator with squared Euclidean distance; "
                        "silhouette_sample is scikit-learn's exact Euclidean silhouette on a seeded sample of "
                        f"{method_rows['silhouette_sample']} rows. They are different measures."))

    blocks.append(("h", 2, "Methods compared"))
    scores = f"CH {best['calinski_harabasz']}, DB {best['davies_bouldin']}, elbow {best['elbow']}"
    method_pick = {
        "summary_lloyd": None, "evaluation": scores, "kmeans_fit": None, "ch_db_inertia": scores,
        "silhouette_spark": best["silhouette_spark"] if "silhouette_spark" in choice.get("voters", [])
        else f"{best['silhouette_spark']} (does not vote)",
        "silhouette_sample": best["silhouette_sample"],
        "gmm": best["bic"], "gap": best["gap"],
    }
    table = []
    for m, desc in METHODS.items():
        n, secs = method_rows.get(m, 0), method_seconds.get(m, 0.0)
        if not n:
            continue
        table.append([desc, _fmt(method_pick[m]), f"{secs:.2f}", str(n), f"{1e6 * secs / n:.3g}"])
    blocks.append(("table", ["method", "chosen k", "total seconds (all k)", "rows", "µs per row"], table))
    blocks.append(("p", "Calinski-Harabasz, Davies-Bouldin and inertia need one pass over the data (two per k with "
                        "MLlib), so their cost grows linearly with the rows. The exact silhouette compares every pair "
                        "of points: it is "
                        "quadratic, which is why it only runs on a bounded sample; Spark's silhouette is linear "
                        "because squared Euclidean distances decompose into per-cluster sums."))
    if summary.get("gap"):
        g = summary["gap"]
        label = f"a seeded sample of {g['rows']} rows" if g["sampled"] else f"all {g['rows']} rows"
        blocks.append(("p", f"Gap statistic: {g['reference_sets']} uniform reference sets over the data's bounding "
                            f"box, computed on {label}{' (SAMPLED)' if g['sampled'] else ''}."))

    blocks.append(("h", 2, "Plots"))
    for name, title in [
        ("inertia", "Inertia (elbow)"), ("calinski_harabasz", "Calinski-Harabasz"), ("davies_bouldin", "Davies-Bouldin"),
        ("silhouette", "Silhouette"), ("bic", "GMM information criteria"), ("gap", "Gap statistic"),
        ("cluster_sizes", "Cluster sizes"), ("pca_scatter", "PCA scatter of a sample"),
        ("cluster_sizes_runner_up", "Cluster sizes, runner-up k"), ("pca_scatter_runner_up", "PCA scatter, runner-up k"),
    ]:
        if name in plots:
            blocks.append(("img", title, name))
    return blocks


def make_plots(rows: Sequence[dict[str, Any]], choice: dict[str, Any], *, sizes: dict[int, Sequence[int]],
               sample_x: np.ndarray, sample_labels: dict[int, np.ndarray]) -> dict[str, bytes]:
    """Every plot the data allows, by name (PNG bytes); sizes and scatter for the recommended k and the runner-up."""
    best = dict(choice["best_k"])
    best["inertia"] = best.get("elbow")
    if "silhouette_spark" not in choice.get("voters", []):
        best["silhouette_spark"] = None  # it did not vote: nothing was chosen by it
    specs = {
        "inertia": ([("inertia", "inertia")], "Inertia against k (elbow marked)", "within-cluster sum of squares", None),
        "calinski_harabasz": ([("calinski_harabasz", "Calinski-Harabasz")], "Calinski-Harabasz (higher is better)",
                              "Calinski-Harabasz index", None),
        "davies_bouldin": ([("davies_bouldin", "Davies-Bouldin")], "Davies-Bouldin (lower is better)",
                           "Davies-Bouldin index", None),
        "silhouette": ([("silhouette_sample", "exact Euclidean, sample"), ("silhouette_spark", "Spark squaredEuclidean")],
                       "Silhouette (higher is better)", "mean silhouette", None),
        "bic": ([("bic", "BIC"), ("aic", "AIC")], "GMM BIC / AIC (lower is better)", "information criterion", None),
        "gap": ([("gap", "Gap(k) ± s_k")], "Gap statistic", "Gap(k)", "gap_sk"),
    }
    plots: dict[str, bytes] = {}
    for name, (series, title, ylabel, err) in specs.items():
        png = metric_plot(rows, series, best, title, ylabel=ylabel, error_key=err)
        if png is not None:
            plots[name] = png
    for suffix, which, k in (("", "recommended", choice["recommended_k"]), ("_runner_up", "runner-up", choice.get("runner_up"))):
        if k is None:
            continue
        if k in sizes:
            plots[f"cluster_sizes{suffix}"] = sizes_plot(sizes[k], k, which=which)
        if k in sample_labels:
            png = pca_plot(sample_x, sample_labels[k], k, which=which)
            if png is not None:
                plots[f"pca_scatter{suffix}"] = png
    return plots


def to_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if b[0] == "h":
            out.append("#" * b[1] + " " + b[2])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "table":
            out.append("| " + " | ".join(b[1]) + " |")
            out.append("|" + "---|" * len(b[1]))
            out.extend("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in b[2])
        elif b[0] == "img":
            out.append(f"![{b[1]}](plots/{b[2]}.png)")
        out.append("")
    return "\n".join(out)


def _numeric(cell: str) -> bool:
    try:
        float(cell.replace(",", ""))
    except ValueError:
        return cell in ("–", "")
    return True


def _left(text: bool) -> str:
    return " style='text-align:left'" if text else ""


def to_html(blocks: Sequence[Block], plots: dict[str, bytes], *, title: str = "Cluster evaluation") -> str:
    e = html.escape
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>",
           "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
           "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
           "img{max-width:100%;display:block;margin:1em 0}", "</style></head><body>"]
    for b in blocks:
        if b[0] == "h":
            out.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            out.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "table":
            text = [not all(_numeric(row[i]) for row in b[2]) for i in range(len(b[1]))]
            out.append("<table><tr>" + "".join(f"<th{_left(t)}>{e(h)}</th>" for h, t in zip(b[1], text, strict=True))
                       + "</tr>")
            out.extend("<tr>" + "".join(f"<td{_left(t)}>{e(c)}</td>" for c, t in zip(row, text, strict=True)) + "</tr>"
                       for row in b[2])
            out.append("</table>")
        elif b[0] == "img":
            data = base64.b64encode(plots[b[2]]).decode("ascii")
            out.append(f"<h3>{e(b[1])}</h3><img alt='{e(b[1])}' src='data:image/png;base64,{data}'>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(output: str, blocks: Sequence[Block], plots: dict[str, bytes], *,
                 title: str = "Cluster evaluation") -> dict[str, str]:
    """Write plots/*.png, report.md and report.html under ``output``; return their paths."""
    paths: dict[str, str] = {}
    for name, png in plots.items():
        fs.write_bytes(fs.join(output, "plots", f"{name}.png"), png)
    paths["plots"] = fs.join(output, "plots")
    paths["report_md"] = fs.join(output, "report.md")
    paths["report_html"] = fs.join(output, "report.html")
    fs.write_text(paths["report_md"], to_markdown(blocks))
    fs.write_text(paths["report_html"], to_html(blocks, plots, title=title))
    return paths
