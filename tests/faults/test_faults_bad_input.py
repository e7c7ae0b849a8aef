"""Bad input across every job: the exit code, ONE error line naming the file, column or key,
no traceback, and no Delta table anywhere under the data root changed.

The jobs run in this process through their command lines (``main(argv)``) against the
suite's one local session: a rejected run costs no JVM start. Expected endings:

- exit 2, bad input or config: the command names something that is not there or not valid;
- exit 1, an I/O fault: a committed data file of a table is corrupt. Spark reports it as
  a failed file read, which is also what a storage outage looks like, so it is not called
  the user's fault; the line names the file;
- exit 0 where the input is valid by contract (ingest maps unsafe column names).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import polars as pl
import pytest
from harness import commands, figure, job_file, versions

from pipelines import delta

pytestmark = pytest.mark.cluster


def _main(job: str):
    spec = importlib.util.spec_from_file_location(f"fault_job_{job}", job_file(job))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def state(spark, work, bronze):
    """Good outputs of every job under one root (each bad case must leave them as they are),
    and the damaged inputs the cases use."""
    root = work / "bad_input"
    good = commands(bronze, root)
    for job in ("cluster_eval", "gmm_fit", "gmm_transform", "tokenize"):
        assert _main(job)([str(a) for a in good[job]]) == 0, job
    damaged = work / "bad_input_damaged"  # outside root: the cases' snapshots must open every table under root
    (damaged / "empty").mkdir(parents=True)
    (damaged / "not_delta").mkdir()
    (damaged / "not_delta" / "notes.txt").write_text("not a table\n")
    (damaged / "bad.yaml").write_text("cluster_eval: [k_min: 2\n  : :\n")
    # a Delta table without _row_id, and one whose columns differ from the fit's
    delta.write_polars(pl.DataFrame({"amount": [1.0, 2.0]}), str(damaged / "no_row_id"), mode="overwrite")
    delta.write_polars(pl.DataFrame({"_row_id": [1, 2], "other": [1.0, 2.0]}), str(damaged / "other_cols"),
                       mode="overwrite")
    # bronze with one committed Parquet file overwritten by random bytes
    corrupt = damaged / "corrupt"
    shutil.copytree(bronze, corrupt)
    victim = Path(delta._open(str(corrupt)).file_uris()[0].removeprefix("file://"))
    victim.write_bytes(os.urandom(victim.stat().st_size))
    # bronze with its last commit cut in half
    truncated = damaged / "truncated_log"
    shutil.copytree(bronze, truncated)
    last = sorted((truncated / "_delta_log").glob("*.json"))[-1]
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    # a tokenizer whose edges of one column were edited out of order
    tokenizer = damaged / "tokenizer_unsorted"
    table = pl.read_delta(str(root / "tokenize" / "tokenizer"))
    swapped = table.with_columns(
        pl.when((pl.col("column") == "score") & (pl.col("bin") == 3)).then(pl.col("upper") + 100.0)
        .otherwise(pl.col("lower")).alias("lower"))
    delta.write_polars(swapped, str(tokenizer), mode="overwrite")
    return {"work": work, "root": root, "bronze": bronze, "good": good, "victim": victim, "last_log": last, "d": damaged}


def _cases(s):
    r, b, d = s["root"], str(s["bronze"]), s["d"]
    ce = ["--output", r / "cluster_eval"]
    fit = ["--fit-dir", r / "gmm_fit"]
    tok = ["--output", r / "tokenize"]
    gt = ["--fit-dir", r / "gmm_fit", "--output", r / "gmm_transform"]
    return [
        # (input kind, job, argv, exit code, text the error line must contain)
        ("paths", "ingest", ["--source", d / "missing.csv", "--format", "csv", "--output", r / "ingest2"], 2, "missing.csv"),
        ("paths", "ingest", ["--source", d / "empty", "--format", "csv", "--output", r / "ingest2"], 2, str(d / "empty")),
        ("paths", "cluster_eval", ["--input", d / "missing", "--format", "delta", *ce], 2, str(d / "missing")),
        ("paths", "cluster_eval", ["--input", d / "not_delta", "--format", "delta", *ce], 2, str(d / "not_delta")),
        ("paths", "gmm_fit", ["--input", d / "not_delta", *fit], 2, str(d / "not_delta")),
        ("paths", "gmm_transform", ["--input", b, "--fit-dir", d / "empty", "--output", r / "gmm_transform"], 2,
         str(d / "empty")),
        ("paths", "tokenize", ["--input", d / "empty", "--columns", "amount", *tok], 2, str(d / "empty")),
        ("paths", "tokenize", ["--input", d / "no_row_id", "--columns", "amount", *tok], 2, "_row_id"),
        ("paths", "gmm_transform", ["--input", d / "no_row_id", *gt], 2, "'score' is missing from the input"),
        ("paths", "pipeline", ["--source", d / "missing.csv", "--format", "csv", "--output", r / "pipe"], 2,
         "missing.csv"),
        ("columns", "cluster_eval", ["--input", b, "--format", "delta", "--features", "x,nope", *ce], 2, "nope"),
        ("columns", "cluster_eval", ["--input", b, "--format", "delta", "--features", "x,segment", *ce], 2, "segment"),
        ("columns", "gmm_fit", ["--input", b, "--columns", "amount,segment", *fit], 2, "segment"),
        ("columns", "tokenize", ["--input", b, "--columns", "amount,segment", *tok], 2, "segment"),
        ("columns", "tokenize", ["--input", b, "--columns", "../amount", *tok], 2, "../amount"),
        ("columns", "gmm_fit", ["--input", b, "--columns", "a/b", *fit], 2, "a/b"),
        ("flags", "cluster_eval", ["--input", b, "--frobnicate", *ce], 2, "--frobnicate"),
        ("flags", "cluster_eval", ["--input", b, "--k-min", "5", "--k-max", "3", *ce], 2, "k_max"),
        ("flags", "cluster_eval", ["--input", b, "--k", "1,3", *ce], 2, "cluster_eval.k"),
        ("flags", "cluster_eval", ["--input", b, "--max-iter", "-1", *ce], 2, "max_iter"),
        ("flags", "gmm_fit", ["--input", b, "--max-components", "0", *fit], 2, "max_components"),
        ("flags", "gmm_fit", ["--input", b, "--bins", "1", *fit], 2, "bins"),
        ("flags", "gmm_fit", ["--input", b, "--mixed", "amount=abc", *fit], 2, "amount=abc"),
        ("flags", "tokenize", ["--input", b, "--bins", "1", *tok], 2, "bins"),
        ("flags", "tokenize", ["--input", b, "--bins", "-3", *tok], 2, "bins"),
        ("flags", "tokenize", ["--input", b, "--relative-error", "2", *tok], 2, "relative_error"),
        ("flags", "gmm_transform", ["--input", b, "--layout", "diagonal", *gt], 2, "diagonal"),
        ("files", "cluster_eval", ["--input", d / "corrupt", "--format", "delta", "--features", "x,y", *ce], 1,
         s["victim"].name),
        ("files", "gmm_fit", ["--input", d / "corrupt", "--columns", "amount", "--fit-dir", d / "fit_corrupt"], 1,
         s["victim"].name),
        ("files", "tokenize", ["--input", d / "corrupt", "--columns", "amount", *tok], 1, s["victim"].name),
        ("files", "gmm_transform", ["--input", d / "corrupt", *gt], 1, s["victim"].name),
        ("files", "cluster_eval", ["--input", d / "truncated_log", "--format", "delta", *ce], 2, s["last_log"].name),
        ("files", "tokenize", ["--input", d / "truncated_log", "--columns", "amount", *tok], 2, s["last_log"].name),
        ("files", "gmm_fit", ["--input", b, "--config", d / "bad.yaml", *fit], 2, "bad.yaml"),
        ("fitted state", "gmm_transform", ["--input", d / "other_cols", *gt], 2, "amount"),
        ("fitted state", "tokenize", ["--detokenize", "--tokenizer", d / "tokenizer_unsorted", "--input",
                                      r / "tokenize" / "tokens", "--output", r / "detok"], 2, "score"),
    ]


def test_bad_input_sweep(state, capsys):
    failures = []
    for kind, job, argv, want_code, named in _cases(state):
        before = versions(state["root"])
        before_bronze = delta.table_version(str(state["bronze"]))
        try:
            code = _main(job)([str(a) for a in argv])
        except SystemExit as exc:  # argparse refuses before the job starts
            code = exc.code
        out, err = capsys.readouterr()
        errors = [line for line in err.splitlines() if "error:" in line]
        problems = []
        if code != want_code:
            problems.append(f"exit {code}, expected {want_code}")
        if len(errors) != 1:
            problems.append(f"{len(errors)} error lines")
        elif named not in errors[0]:
            problems.append(f"error line does not name {named!r}")
        if "Traceback" in out + err or "\tat org." in out + err or "0: <unknown>" in out + err:
            problems.append("a traceback was printed")
        changed = {t: v for t, v in versions(state["root"]).items() if before.get(t, v) != v}
        if changed or delta.table_version(str(state["bronze"])) != before_bronze:
            problems.append(f"tables changed: {changed}")
        line = errors[0] if errors else (err.strip().splitlines() or [""])[-1]
        figure("bad inputs", input=kind, job=job, case=" ".join(str(a).replace(str(state["work"]), "…")
                                                           for a in argv[:4]),
               exit=code, line=line.replace(str(state["work"]), "…")[:160], ok="yes" if not problems else "NO")
        if problems:
            failures.append(f"{job} {argv[:4]}: {'; '.join(problems)}: {line}")
    assert not failures, "\n".join(failures)


def test_k_is_refused_before_the_data_are_read(state, capsys):
    """``--k 1`` used to fail only after the data prepare; now before any Spark work."""
    code = _main("cluster_eval")(["--input", str(state["bronze"]), "--format", "delta", "--k", "1",
                                  "--output", str(state["root"] / "cluster_eval")])
    err = capsys.readouterr().err
    assert code == 2 and "cluster_eval.k: every k must be >= 2" in err
    assert "prepare" not in err  # no progress line: the stage never started reading


def test_ingest_maps_unsafe_column_names_inside_the_table(spark, tmp_path, capsys):
    """A header with path separators and ``..`` is valid input: names are mapped, nothing leaves the output."""
    src = tmp_path / "in.csv"
    src.write_text("../evil,a/b,ok\n1,2,3\n4,5,6\n")
    out = tmp_path / "out"
    code = _main("ingest")(["--source", str(src), "--format", "csv", "--output", str(out)])
    capsys.readouterr()
    assert code == 0
    columns = pl.read_delta(str(out / "bronze")).columns
    assert [c for c in columns if not c.startswith("_")] == ["evil", "a_b", "ok"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out"]
    figure("bad inputs", input="columns", job="ingest", case="header ../evil,a/b", exit=code,
           line=f"mapped to {columns[:3]}", ok="yes")
