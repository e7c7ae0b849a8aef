"""The ingest job end to end, on real messy files written by the tests.

Every run goes through ``jobs.ingest.main`` in-process and is checked for its exit code,
its stderr line and its summary (the last stdout line); every successful run must
reconcile ``rows_read = rows_written + rows_quarantined`` against the tables themselves.
"""

from __future__ import annotations

import json
import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality

from jobs.ingest import main
from pipelines import datasets, delta
from pipelines.ingest import stage

MESSY_CSV = (
    b"\xef\xbb\xbfid,amount,note\n"                 # UTF-8 BOM before the header
    b'1,1.5,"hello, world"\n'                       # quoted delimiter
    b'2,NaN,"line one\nline two"\n'                 # quoted newline
    b"3,inf,plain\n"
    b'4,-inf,"say ""hi"""\n'                        # doubled quotes
    b"5,,empty amount\n"
    b"6,N/A,not a number\n"
    b'7,"1,5",comma decimal\n'
    b"8,1e400,overflow\n"
    b"9,2.5,too,many,fields\n"                      # 5 fields
    b"10\n"                                         # 1 field
    b"id,amount,note\n"                             # header repeated mid-file
    b"11,\xff\xfe,bad bytes\n"                      # not UTF-8
    b"12,-0.0,last\n"
    b"13, ,blank amount\n"
)
# The documented safe names of the diabetes export's header (README, "ingest").
DIABETES_SAFE_NAMES = [
    "age_years", "sex", "bmi_kg_m2", "blood_pressure_mm_hg", "total_cholesterol_tc", "ldl", "hdl", "tc_hdl",
    "log_triglycerides_ltg", "blood_sugar_glu", "progression_1_yr",
]
BAD_ROWS = {
    9: "wrong number of fields: expected 3, got 5",
    10: "wrong number of fields: expected 3, got 1",
    11: "amount: undecodable bytes (not valid UTF-8)",
}


def run_job(capsys, *argv):
    """Run the job; return (exit code, summary, stderr)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    summary = json.loads(lines[-1]) if lines else None
    return code, summary, captured.err


def ok_run(capsys, spark, *argv):
    code, summary, err = run_job(capsys, *argv)
    assert code == 0, err
    assert summary["status"] == "succeeded"
    counts = summary["counts"]
    bronze = delta.read_table(spark, summary["outputs"]["bronze"])
    quarantine = delta.read_table(spark, summary["outputs"]["quarantine"])
    assert counts["rows_read"] == counts["rows_written"] + counts["rows_quarantined"]
    if "--mode" not in argv:  # overwrite: the tables hold exactly this run
        assert bronze.count() == counts["rows_written"]
        assert quarantine.count() == counts["rows_quarantined"]
    return summary, bronze, quarantine


def write(path, data: bytes | str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def reasons(quarantine, key="_reason"):
    return sorted(r[key] for r in quarantine.select(key).collect())


# --------------------------------------------------------------------------- CSV


@pytest.mark.parametrize("null_values", [None, ""], ids=["default-tokens", "empty-only"])
def test_messy_csv_inferred_keeps_every_value_and_quarantines_bad_records(spark, tmp_path, capsys, null_values):
    src = write(tmp_path / "in" / "messy.csv", MESSY_CSV)
    flags = [] if null_values is None else ["--null-values", null_values]
    summary, bronze, quarantine = ok_run(capsys, spark, "--source", src, "--format", "csv", "--output", tmp_path / "out",
                                         *flags)

    counts = summary["counts"]
    assert (counts["rows_read"], counts["rows_written"], counts["rows_quarantined"], counts["files"]) == (14, 10, 4, 1)
    # 1,5 and 1e400 cannot be doubles: the column keeps its text. N/A is null by default, and
    # text with --null-values '' (empty only: the behaviour before null tokens).
    assert [(c["name"], c["type"], c["from"]) for c in summary["schema"]] == [
        ("id", "bigint", "inferred"), ("amount", "string", "inferred"), ("note", "string", "inferred"),
    ]
    expected = spark.createDataFrame(
        [
            (1, "1.5", "hello, world"), (2, "NaN", "line one\nline two"), (3, "inf", "plain"), (4, "-inf", 'say "hi"'),
            (5, None, "empty amount"), (6, "N/A" if null_values == "" else None, "not a number"),
            (7, "1,5", "comma decimal"),
            (8, "1e400", "overflow"), (12, "-0.0", "last"), (13, " ", "blank amount"),
        ],
        "id bigint, amount string, note string",
    )
    assert_df_equality(bronze.select("id", "amount", "note"), expected, ignore_row_order=True, ignore_nullable=True)
    assert reasons(quarantine) == sorted([*BAD_ROWS.values(), "repeated header row"])
    raw = {r._reason: r._raw for r in quarantine.collect()}
    assert raw[BAD_ROWS[9]] == "9,2.5,too,many,fields"
    assert raw[BAD_ROWS[10]] == "10"
    assert set(quarantine.columns) == {"_row_id", "_source_file", "_reason", "_raw", "_ingested_at"}
    assert {r._source_file for r in quarantine.collect()} == {str(src)}
    assert {r._source_file for r in bronze.collect()} == {str(src)}

    # One file, one split: the id is the record's position in the file (the header line excluded).
    ids = {r.id: r._row_id for r in bronze.select("id", "_row_id").collect()}
    assert ids == {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6, 8: 7, 12: 12, 13: 13}
    all_ids = [r._row_id for r in bronze.select("_row_id").union(quarantine.select("_row_id")).collect()]
    assert sorted(all_ids) == list(range(14))


@pytest.mark.parametrize("null_values", [None, ""], ids=["default-tokens", "empty-only"])
def test_messy_csv_with_schema_file_quarantines_values_that_fail_their_type(spark, tmp_path, capsys, null_values):
    src = write(tmp_path / "messy.csv", MESSY_CSV)
    schema = write(tmp_path / "schema.yaml", "id: bigint\namount: double\nnote: string\n")
    flags = [] if null_values is None else ["--null-values", null_values]
    summary, bronze, quarantine = ok_run(
        capsys, spark, "--source", src, "--format", "csv", "--output", tmp_path / "out", "--schema", schema, *flags
    )
    na_row = [] if null_values == "" else [(6, None, "not a number")]  # N/A: a null token, or a bad double
    expected = spark.createDataFrame(
        [(1, 1.5, "hello, world"), (2, math.nan, "line one\nline two"), (3, math.inf, "plain"), (4, -math.inf, 'say "hi"'),
         (5, None, "empty amount"), *na_row, (12, -0.0, "last"), (13, None, "blank amount")],
        "id bigint, amount double, note string",
    )
    assert_df_equality(bronze.select("id", "amount", "note"), expected, ignore_row_order=True, ignore_nullable=True,
                       allow_nan_equality=True)
    na_reason = ["amount: cannot parse 'N/A' as double"] if null_values == "" else []
    assert reasons(quarantine) == sorted([
        *BAD_ROWS.values(), "repeated header row", *na_reason,
        "amount: cannot parse '1,5' as double",
        "amount: value '1e400' out of range for double",
    ])
    # null: no value in the source (row 5) or a null token (row 6); empty: blank text (row 13).
    nulls = 1 if null_values == "" else 2
    assert summary["special_values"]["amount"] == {"null": nulls, "empty": 1, "nan": 1, "pos_inf": 1, "neg_inf": 1}
    assert summary["special_values"]["note"] == {"null": 0, "empty": 0}
    assert [c["from"] for c in summary["schema"]] == ["schema_file"] * 3


@pytest.mark.parametrize(
    ("text", "flags"),
    [
        ("a;b;c\n1;x y;2,5\n2;\"q;uoted\";3\n3;z\n", []),                         # ';' detected from the header
        ("a\tb\tc\n1\tx y\t2,5\n2\t\"q\tuoted\"\t3\n3\tz\n", ["--delimiter", "\\t"]),  # tab given as typed in a shell
    ],
)
def test_semicolon_and_tab_delimiters(spark, tmp_path, capsys, text, flags):
    src = write(tmp_path / "d.csv", text)
    summary, bronze, quarantine = ok_run(capsys, spark, "--source", src, "--format", "csv", "--output", tmp_path / "o", *flags)
    sep = ";" if not flags else "\t"
    expected = spark.createDataFrame([(1, "x y", "2,5"), (2, f"q{sep}uoted", "3")], "a bigint, b string, c string")
    assert_df_equality(bronze.select("a", "b", "c"), expected, ignore_row_order=True, ignore_nullable=True)
    assert reasons(quarantine) == ["wrong number of fields: expected 3, got 2"]


def test_column_names_made_safe_and_recorded(spark, tmp_path, capsys):
    header = 'Amount (€),amount,first name,a.b,,../x,a/b,名前,Température\n'
    src = write(tmp_path / "names.csv", header + "1,2,Ann,3,4,5,6,7,8\n")
    summary, bronze, _ = ok_run(capsys, spark, "--source", src, "--format", "csv", "--output", tmp_path / "out")
    safe = ["amount", "amount_2", "first_name", "a_b", "col_5", "x", "a_b_2", "col_8", "temperature"]
    assert bronze.columns == [*safe, "_row_id", "_source_file", "_ingested_at"]
    originals = ["Amount (€)", "amount", "first name", "a.b", "", "../x", "a/b", "名前", "Température"]
    mapping = [{"original": o, "safe": s} for o, s in zip(originals, safe, strict=True)]
    assert summary["column_mapping"] == mapping
    props = delta.table_properties(summary["outputs"]["bronze"])
    assert json.loads(props["pipelines.ingest.columnMapping"]) == mapping
    if delta.backend(spark) == "delta-rs":  # where the README says it is on this backend
        from deltalake import DeltaTable

        described = json.loads(DeltaTable(summary["outputs"]["bronze"]).metadata().description)["pipelines.properties"]
        assert json.loads(described["pipelines.ingest.columnMapping"]) == mapping
    # Nothing was written outside the output root.
    assert sorted(os.listdir(tmp_path)) == ["names.csv", "out"]
    assert sorted(os.listdir(tmp_path / "out")) == ["_ingested_files", "_runs", "bronze", "quarantine"]


def test_null_tokens_in_a_real_export_keep_numeric_columns_numeric(spark, tmp_path, capsys):
    """scikit-learn's diabetes data as an export with NA / N/A / null cells: typed, nulls counted, values exact."""
    from sklearn.datasets import load_diabetes

    src = datasets.write_diabetes_export(str(tmp_path / "diabetes.csv"))
    summary, bronze, quarantine = ok_run(capsys, spark, "--source", src, "--format", "csv", "--output", tmp_path / "out")
    assert summary["counts"]["rows_quarantined"] == 0 and summary["counts"]["rows_written"] == 442
    assert [c["name"] for c in summary["schema"]] == DIABETES_SAFE_NAMES
    types = {c["name"]: c["type"] for c in summary["schema"]}
    assert set(types.values()) <= {"bigint", "double"}, types
    # Every token written is a counted null, and in no other column.
    text = (tmp_path / "diabetes.csv").read_text().splitlines()[1:]
    cells = [line.split(",") for line in text]
    for j, name in enumerate(DIABETES_SAFE_NAMES):
        tokens = sum(row[j] in datasets.DIABETES_NULL_TOKENS for row in cells)
        assert summary["special_values"][name]["null"] == tokens, name
        assert (tokens > 0) == (j in datasets.DIABETES_MISSING_COLUMNS)
    assert {t for seen in summary["null_tokens_seen"].values() for t in seen} == set(datasets.DIABETES_NULL_TOKENS)
    # The values that are present equal scikit-learn's, row by row (the id is the record's position).
    data = load_diabetes(scaled=False)
    reference = [[*map(float, features), float(target)] for features, target in zip(data.data, data.target, strict=True)]
    for r in bronze.orderBy("_row_id").collect():
        want = reference[r["_row_id"]]
        got = [r[name] for name in DIABETES_SAFE_NAMES]
        assert all(g is None or g == w for g, w in zip(got, want, strict=True)), (got, want)
    # With empty-only null tokens the same file gives text columns (the behaviour before tokens).
    summary, _, _ = ok_run(capsys, spark, "--source", src, "--format", "csv", "--output", tmp_path / "out2",
                           "--null-values", "")
    assert {c["name"]: c["type"] for c in summary["schema"]}["bmi_kg_m2"] == "string"


def test_schema_file_null_values_per_column(spark, tmp_path, capsys):
    src = write(tmp_path / "a.csv", "a,b\n1,-\n-,NA\n3,4\n")
    schema = write(tmp_path / "s.yaml", "a: {type: bigint, null_values: ['-']}\nb: double\n")
    summary, bronze, quarantine = ok_run(capsys, spark, "--source", src, "--format", "csv", "--output", tmp_path / "o",
                                         "--schema", schema)
    # a: only '-' is null; b: the run's tokens (NA), so its '-' fails as a double.
    assert_df_equality(bronze.select("a", "b"), spark.createDataFrame([(None, None), (3, 4.0)], "a bigint, b double"),
                       ignore_row_order=True, ignore_nullable=True)
    assert reasons(quarantine) == ["b: cannot parse '-' as double"]
    assert summary["null_values"]["columns"] == {"a": ["-"]}


def test_dry_run_prints_schema_mapping_and_tokens_and_writes_nothing(spark, tmp_path, capsys):
    src = datasets.write_diabetes_export(str(tmp_path / "in" / "diabetes.csv"))
    out = tmp_path / "out"
    code = main(["--source", src, "--format", "csv", "--output", str(out), "--dry-run", "--infer-sample-rows", "100"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["status"] == "succeeded" and summary["counts"]["sample_rows"] == 100
    assert summary["column_mapping"] == [{"original": o, "safe": n}
                                         for o, n in zip(datasets.DIABETES_HEADER, DIABETES_SAFE_NAMES, strict=True)]
    table = "\n".join(lines[:-1])
    assert "'BMI (kg/m²)'" in table and "bmi_kg_m2" in table and "double" in table
    # The tokens of the 100 sampled rows, as the file has them.
    cells = [line.split(",")[2] for line in (tmp_path / "in" / "diabetes.csv").read_text().splitlines()[1:101]]
    seen = {t: cells.count(t) for t in datasets.DIABETES_NULL_TOKENS if t in cells}
    assert seen and summary["null_tokens_seen"]["bmi_kg_m2"] == seen
    bmi_line = next(line for line in lines if line.startswith("'BMI (kg/m²)'"))
    assert all(f"{t} x{n}" in bmi_line for t, n in seen.items())
    assert "rows_read" not in summary["counts"]
    # Nothing written: no output folder, no table, no run record.
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["in"]


# --------------------------------------------------------------------------- JSON, Parquet, Delta


def test_json_lines_with_broken_lines(spark, tmp_path, capsys):
    lines = [
        '{"id": 1, "v": 1.5, "tags": {"a": 1}}',
        '{"id": 2, "v": "NaN"}',
        "{broken",
        '{"id": 3, "v": "x"',
        "",
        '{"id": 4, "v": null, "late": "only here"}',
        '{"id": 5, "v": "\xff"}',
    ]
    data = "\n".join(lines).encode("utf-8").replace("\xff".encode(), b"\xff") + b"\n"
    # A folder name Spark must URL-encode: ids and _source_file go through the decoding lookup.
    src = write(tmp_path / "j son é%" / "a.jsonl", data)
    summary, bronze, quarantine = ok_run(capsys, spark, "--source", src.parent, "--format", "json",
                                         "--output", tmp_path / "out")
    assert summary["counts"]["rows_read"] == 6  # the blank line is not a record
    expected = spark.createDataFrame(
        [(1, 1.5, '{"a":1}', None), (2, math.nan, None, None), (4, None, None, "only here")],
        "id bigint, v double, tags string, late string",
    )
    assert_df_equality(bronze.select("id", "v", "tags", "late"), expected, ignore_row_order=True,
                       ignore_nullable=True, allow_nan_equality=True)
    # Spark's JSON parser rejects the line with bad bytes as a whole, so it is malformed and undecodable.
    assert reasons(quarantine) == [
        "malformed JSON record (not one JSON object per line)",
        "malformed JSON record (not one JSON object per line)",
        "malformed JSON record (not one JSON object per line); undecodable bytes (not valid UTF-8)",
    ]
    assert '{"id": 5, "v": "\ufffd"}' in {r._raw for r in quarantine.collect()}
    assert sorted(r._raw for r in quarantine.collect() if r._raw.startswith("{broken") or r._raw.endswith('"x"')) == [
        '{"id": 3, "v": "x"', "{broken"]
    assert {r._source_file for r in quarantine.collect()} == {str(src)}
    assert {r._source_file for r in bronze.collect()} == {str(src)}
    assert sorted(r._row_id for r in bronze.collect()) == [0, 1, 4]  # record positions (a blank line is none)


def _parquet(path, table):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def test_parquet_schema_evolution_is_merged(spark, tmp_path, capsys):
    _parquet(tmp_path / "p" / "part1.parquet", pa.table({"id": [1, 2], "x": [0.5, float("nan")]}))
    _parquet(tmp_path / "p" / "part2.parquet", pa.table({"id": [3], "x": [float("inf")], "extra": ["new"]}))
    summary, bronze, quarantine = ok_run(capsys, spark, "--source", tmp_path / "p", "--format", "parquet",
                                         "--output", tmp_path / "out")
    expected = spark.createDataFrame([(1, 0.5, None), (2, math.nan, None), (3, math.inf, "new")],
                                     "id bigint, x double, extra string")
    assert_df_equality(bronze.select("id", "x", "extra"), expected, ignore_row_order=True, ignore_nullable=True,
                       allow_nan_equality=True)
    assert quarantine.count() == 0
    assert summary["special_values"]["x"] == {"null": 0, "nan": 1, "pos_inf": 1, "neg_inf": 0}
    ids = {r.id: r._row_id for r in bronze.collect()}
    assert ids == {1: 0, 2: 1, 3: 1 << 40}  # (file ordinal << 40) + Parquet row index


def test_parquet_type_conflict_names_both_files(spark, tmp_path, capsys):
    a = _parquet(tmp_path / "p" / "a.parquet", pa.table({"id": [1], "x": [1.5]}))
    b = _parquet(tmp_path / "p" / "b.parquet", pa.table({"id": [2], "x": ["text"]}))
    err = _user_error(capsys, "--source", tmp_path / "p", "--format", "parquet", "--output", tmp_path / "o")
    assert str(a) in err and str(b) in err and "column 'x'" in err


def test_delta_source(spark, tmp_path, capsys):
    source = str(tmp_path / "src_table")
    df = spark.createDataFrame([(1, "a", 1.0), (2, "b", None), (3, None, float("-inf"))], "k int, s string, Value double")
    delta.write_table(df, source, mode="overwrite")
    summary, bronze, quarantine = ok_run(capsys, spark, "--source", source, "--format", "delta", "--output", tmp_path / "out")
    assert_df_equality(bronze.select("k", "s", "value"), df.withColumnRenamed("Value", "value"),
                       ignore_row_order=True, ignore_nullable=True)
    assert quarantine.count() == 0
    assert summary["column_mapping"][2] == {"original": "Value", "safe": "value"}
    assert bronze.select("_row_id").distinct().count() == 3


# --------------------------------------------------------------------------- ids, idempotence, append


def test_row_ids_unique_stable_and_deterministic_across_reruns_and_appends(spark, tmp_path, capsys):
    folder = tmp_path / "in"
    write(folder / "a.csv", "k,v\n" + "".join(f"{i},{i * 0.5}\n" for i in range(50)))
    write(folder / "b.csv", "k,v\n" + "".join(f"{i},x{i}\n" for i in range(50, 80)))  # v is text here
    out = tmp_path / "out"
    schema = write(tmp_path / "s.ddl", "k BIGINT, v DOUBLE")
    args = ["--source", folder, "--format", "csv", "--output", out, "--schema", schema]
    first, bronze, quarantine = ok_run(capsys, spark, *args)
    assert (first["counts"]["rows_written"], first["counts"]["rows_quarantined"]) == (50, 30)
    ids_1 = {r.k: r._row_id for r in bronze.collect()}
    assert len(set(ids_1.values())) == 50
    # Re-reading returns the same ids for the same rows.
    assert {r.k: r._row_id for r in delta.read_table(spark, str(out / "bronze")).collect()} == ids_1
    # A re-run (overwrite) replaces, never duplicates, and gives the same ids.
    _, bronze, _ = ok_run(capsys, spark, *args)
    assert bronze.count() == 50
    assert {r.k: r._row_id for r in bronze.collect()} == ids_1

    # Append: already-ingested files are refused...
    code, summary, err = run_job(capsys, *args, "--mode", "append")
    assert code == 2 and "already ingested" in err and "--force" in err
    assert delta.read_table(spark, str(out / "bronze")).count() == 50
    # ...a new file among them is ingested alone, with ids unique across appends...
    write(folder / "c.csv", "k,v\n" + "".join(f"{i},{i}\n" for i in range(80, 90)))
    summary, bronze, quarantine = ok_run(capsys, spark, *args, "--mode", "append")
    assert summary["counts"]["files"] == 1 and summary["counts"]["files_refused"] == 2
    assert summary["counts"]["rows_written"] == 10 and bronze.count() == 60
    ids = [r._row_id for r in bronze.select("_row_id").union(quarantine.select("_row_id")).collect()]
    assert len(ids) == len(set(ids)) == 90
    # ...and --force ingests a file again on purpose.
    summary, bronze, _ = ok_run(capsys, spark, "--source", folder / "c.csv", "--format", "csv", "--output", out,
                                "--schema", schema, "--mode", "append", "--force")
    assert bronze.count() == 70
    assert bronze.select("_row_id").distinct().count() == 70
    ledger = delta.read_table(spark, str(out / "_ingested_files"))
    assert ledger.count() == 4
    assert {r.path for r in ledger.collect()} == {str(folder / n) for n in ("a.csv", "b.csv", "c.csv")}

    # Rows committed by a run that never recorded its files (killed between commits) block appends,
    # rather than being duplicated or left unaccounted for.
    empty_ledger = stage._arrow_schema(stage.LEDGER_SCHEMA).empty_table()
    delta.write_polars(empty_ledger, str(out / "_ingested_files"), mode="overwrite")
    write(folder / "d.csv", "k,v\n1,1\n")
    err = _user_error(capsys, "--source", folder / "d.csv", "--format", "csv", "--output", out, "--mode", "append")
    assert "did not record its files" in err and str(out / "bronze") in err


def test_output_files_sized_from_input_bytes(spark, tmp_path, capsys):
    folder = tmp_path / "many"
    for f in range(12):
        write(folder / f"f{f:02d}.csv", "k,v\n" + "".join(f"{i},{'x' * 200}\n" for i in range(f * 1000, f * 1000 + 1000)))
    input_bytes = sum(p.stat().st_size for p in folder.iterdir())
    summary, bronze, _ = ok_run(capsys, spark, "--source", folder, "--format", "csv", "--output", tmp_path / "out",
                                "--target-file-mb", "1")
    expected_files = math.ceil(input_bytes / (1 << 20))
    assert expected_files == 3
    assert summary["counts"]["output_files_target"] == expected_files
    from deltalake import DeltaTable

    assert len(DeltaTable(str(tmp_path / "out" / "bronze")).file_uris()) == expected_files
    assert bronze.select("_row_id").distinct().count() == 12000


def test_reconciliation_mismatch_fails_the_job(spark, tmp_path, capsys, monkeypatch):
    src = write(tmp_path / "a.csv", "k\n1\n2\n")
    real = stage._write_counted
    monkeypatch.setattr(stage, "_write_counted", lambda *a, **k: real(*a, **k) - 1)  # a row "lost" by the writer
    code, summary, err = run_job(capsys, "--source", src, "--format", "csv", "--output", tmp_path / "out")
    assert code == 1
    assert summary["status"] == "failed" and summary["error"].startswith("reconciliation failed: rows_read 2 != rows_written 1")
    assert not delta.table_exists(str(tmp_path / "out" / "_ingested_files"))


# --------------------------------------------------------------------------- user errors


def _user_error(capsys, *argv):
    code, _, err = run_job(capsys, *argv)
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:") or ": error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_user_errors_exit_2_with_one_line_naming_the_path_or_option(spark, tmp_path, capsys):
    out = str(tmp_path / "out")
    csv_file = write(tmp_path / "ok.csv", "a\n1\n")
    parquet_file = _parquet(tmp_path / "x.parquet", pa.table({"a": [1]}))
    assert "/nope: path does not exist" in _user_error(capsys, "--source", tmp_path / "nope", "--format", "csv", "--output", out)
    assert "glob matched no files" in _user_error(capsys, "--source", tmp_path / "*.tsv", "--format", "csv", "--output", out)
    os.symlink(tmp_path / "gone.csv", tmp_path / "dangling.csv")
    err = _user_error(capsys, "--source", tmp_path / "dangling.csv", "--format", "csv", "--output", out)
    assert "dangling.csv: cannot read file" in err
    err = _user_error(capsys, "--source", parquet_file, "--format", "csv", "--output", out)
    assert "x.parquet: is a Parquet file, not csv (--format csv)" in err
    err = _user_error(capsys, "--source", csv_file, "--format", "parquet", "--output", out)
    assert "ok.csv: not a Parquet file (--format parquet)" in err
    err = _user_error(capsys, "--source", csv_file, "--format", "json", "--output", out)
    assert "ok.csv: not JSON lines" in err
    err = _user_error(capsys, "--source", tmp_path, "--format", "delta", "--output", out)
    assert "not a Delta table" in err
    bad_schema = write(tmp_path / "bad.yaml", "a: [unclosed\n")
    err = _user_error(capsys, "--source", csv_file, "--format", "csv", "--output", out, "--schema", bad_schema)
    assert "bad.yaml: schema file does not parse" in err
    other = write(tmp_path / "other.yaml", "b: double\n")
    err = _user_error(capsys, "--source", csv_file, "--format", "csv", "--output", out, "--schema", other)
    assert "other.yaml: column 'b' is not in the source" in err
    assert "--source: required" in _user_error(capsys, "--format", "csv", "--output", out)
    with pytest.raises(SystemExit) as info:  # argparse's own usage error, also exit 2 and one line
        main(["--source", str(csv_file), "--format", "xml", "--output", out])
    assert info.value.code == 2 and "argument --format: invalid choice: 'xml'" in capsys.readouterr().err
    write(tmp_path / "h" / "a.csv", "a,b\n1,2\n")
    write(tmp_path / "h" / "b.csv", "b,a\n1,2\n")
    err = _user_error(capsys, "--source", tmp_path / "h", "--format", "csv", "--output", out)
    assert "b.csv: header 'b,a' differs from" in err and "a.csv" in err
