"""Type checks, inference and schema files (Spark SQL expressions on small inline frames)."""

from __future__ import annotations

import math

import polars as pl
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.config import DEFAULT_NULL_VALUES
from pipelines.errors import UserError
from pipelines.ingest import infer
from pipelines.ingest import schema as S

STR = T.StructType([T.StructField("v", T.StringType())])


def _check(spark, values, target):
    df = spark.createDataFrame([(v,) for v in values], STR)
    check = S.check_field(F.col("v"), name="v", source_type=T.StringType(), target=target)
    rows = df.select("v", check.value.alias("value"), check.problem.alias("problem")).collect()
    return {r.v: (r.value, r.problem) for r in rows}


def test_double_keeps_nan_and_inf_and_quarantines_text_comma_and_overflow(spark):
    got = _check(spark, ["1.5", " 2 ", "NaN", "inf", "-Infinity", "+INF", "1e400", "-1e400", "1,5", "N/A", "1d", "", " "],
                 T.DoubleType())
    assert got["1.5"] == (1.5, None)
    assert got[" 2 "] == (2.0, None)
    assert math.isnan(got["NaN"][0]) and got["NaN"][1] is None
    assert got["inf"] == (math.inf, None)
    assert got["-Infinity"] == (-math.inf, None)
    assert got["+INF"] == (math.inf, None)
    assert got["1e400"][1] == "v: value '1e400' out of range for double"
    assert got["-1e400"][1] == "v: value '-1e400' out of range for double"
    assert got["1,5"][1] == "v: cannot parse '1,5' as double"
    assert got["N/A"][1] == "v: cannot parse 'N/A' as double"
    assert got["1d"] == (1.0, None)  # casting accepts what Spark's cast accepts; inference is stricter
    assert got[""] == (None, None)  # blank: null, counted as empty, not a failure
    assert got[" "] == (None, None)


def test_integers_decimals_dates_booleans(spark):
    got = _check(spark, ["42", "-7", "1.5", "99999999999999999999", "007", "1e3"], T.LongType())
    assert got["42"] == (42, None) and got["-7"] == (-7, None)
    assert got["1.5"][1] == "v: cannot parse '1.5' as bigint"  # never truncated to 1
    assert got["99999999999999999999"][1] == "v: value '99999999999999999999' out of range for bigint"
    assert got["007"] == (7, None)
    assert got["1e3"][1] == "v: cannot parse '1e3' as bigint"
    got = _check(spark, ["12.34", "123456.7", "x"], T.DecimalType(5, 2))
    assert str(got["12.34"][0]) == "12.34" and got["12.34"][1] is None
    assert got["123456.7"][1] == "v: value '123456.7' out of range for decimal(5,2)"
    assert got["x"][1] == "v: cannot parse 'x' as decimal(5,2)"
    got = _check(spark, ["2024-02-29", "2023-02-29", "2024"], T.DateType())
    assert str(got["2024-02-29"][0]) == "2024-02-29"
    assert got["2023-02-29"][1] == "v: cannot parse '2023-02-29' as date"
    assert got["2024"][1] == "v: cannot parse '2024' as date"  # Spark's cast would make it 2024-01-01
    got = _check(spark, ["true", "FALSE", "maybe"], T.BooleanType())
    assert got["true"] == (True, None) and got["FALSE"] == (False, None)
    assert got["maybe"][1] == "v: cannot parse 'maybe' as boolean"


def test_long_values_are_cut_in_the_reason(spark):
    got = _check(spark, ["x" * 100], T.DoubleType())
    assert got["x" * 100][1] == f"v: cannot parse '{'x' * 40}...' as double"


def test_infer_types_keeps_every_value():
    rows = [
        ("1", "1.5", "NaN", "true", "2024-01-01", "2024-01-01 10:00:00", "1", "1.5", None, "007", "1"),
        ("2", "2", "inf", "false", "2024-01-02", "2024-01-02T11:00:00Z", "N/A", "1,5", "", "010", "NA"),
        (None, "-3e5", "-inf", None, None, None, "3", "1e400", " ", "1", " null "),
    ]
    cols = ["int", "dbl", "special", "bool", "date", "ts", "int_na", "dbl_comma", "blank", "zeros", "int_tokens"]
    df = pl.DataFrame(rows, schema=dict.fromkeys(cols, pl.String), orient="row")
    got = infer.infer_types(df, null_values={"int_tokens": ("", "NA", "null")})
    assert got == {
        "int": "bigint", "dbl": "double", "special": "double", "bool": "boolean", "date": "date",
        "ts": "timestamp", "int_na": "string", "dbl_comma": "string", "blank": "string", "zeros": "string",
        "int_tokens": "bigint",
    }
    # The same column with the default tokens: N/A is null, so the integers stay integers.
    assert infer.infer_types(df.select("int_na"), null_values={"int_na": DEFAULT_NULL_VALUES}) == {"int_na": "bigint"}
    assert infer.tokens_seen(df, null_values={"int_tokens": ("NA", "null"), "int": ("NA",)}) == {
        "int_tokens": {"NA": 1, "null": 1}}


@pytest.mark.parametrize(
    ("value", "dtype"),
    [
        ("2024-02-29", "date"), ("2023-02-29", "string"), ("2024-01-01T23:59:59.5+01:00", "timestamp"),
        ("2024-01-01T24:00", "string"), ("2024-01-01 10:61", "string"), ("2024-01-01T10:00+19:00", "string"),
        ("9223372036854775807", "bigint"), ("9223372036854775808", "double"), ("1e308", "double"),
        ("1e309", "string"), ("-Infinity", "double"), (".5", "double"), ("+7", "bigint"), (" TRUE ", "boolean"),
    ],
)
def test_inferred_type_agrees_with_spark_cast(spark, value, dtype):
    """What inference accepts, Spark's cast keeps unchanged; what it refuses stays text."""
    assert infer.infer_types(pl.DataFrame({"v": [value]}), null_values={}) == {"v": dtype}
    if dtype != "string":
        got = _check(spark, [value], T.DataType.fromDDL(dtype))[value]
        assert got[0] is not None and got[1] is None


def test_null_tokens_are_null_in_typed_and_text_columns(spark):
    df = spark.createDataFrame([(v,) for v in ["1.5", "NA", " N/A ", "-999", "x", None]], STR)
    tokens = ("", "NA", "N/A", "-999")
    for target in (T.DoubleType(), T.StringType()):
        check = S.check_field(F.col("v"), name="v", source_type=T.StringType(), target=target, null_values=tokens)
        got = {r.v: (r.value, r.problem) for r in df.select("v", check.value.alias("value"),
                                                              check.problem.alias("problem")).collect()}
        assert got["NA"] == got[" N/A "] == got["-999"] == (None, None)  # -999 would parse: a token wins
        assert got["1.5"] == ((1.5, None) if target == T.DoubleType() else ("1.5", None))
    assert _check(spark, ["NA"], T.DoubleType())["NA"] == (None, "v: cannot parse 'NA' as double")  # no tokens


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("s.ddl", "id BIGINT, amount DOUBLE, day DATE"),
        ("s.json", '{"id": "bigint", "amount": "double", "day": "date"}'),
        ("s.json", '[{"name": "id", "type": "bigint"}, {"name": "amount", "type": "double"}, {"name": "day", "type": "date"}]'),
        ("s.yaml", "id: bigint\namount: double\nday: date\n"),
        ("s.json", T.StructType([T.StructField("id", T.LongType()), T.StructField("amount", T.DoubleType()),
                                 T.StructField("day", T.DateType())]).json()),
    ],
)
def test_schema_file_formats(spark, tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    assert S.read_schema_file(str(path)) == [
        S.SchemaField("id", T.LongType()), S.SchemaField("amount", T.DoubleType()), S.SchemaField("day", T.DateType())]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("s.yaml", "id: bigint\namount: {type: double, null_values: ['-', '']}\n"),
        ("s.json", '[{"name": "id", "type": "bigint"}, {"name": "amount", "type": "double", "null_values": ["-", ""]}]'),
    ],
)
def test_schema_file_sets_null_values_per_column(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    assert S.read_schema_file(str(path)) == [
        S.SchemaField("id", T.LongType()), S.SchemaField("amount", T.DoubleType(), ("-", ""))]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("s.yaml", "id: [unclosed\n", "schema file does not parse"),
        ("s.json", "{not json", "schema file does not parse"),
        ("s.yaml", "id: flaot\n", "column 'id': unknown type 'flaot'"),
        ("s.ddl", "id BIGINT,, x", "not a valid DDL schema"),
        ("s.yaml", "id: array<int>\n", "type array<int> is not supported"),
        ("s.yaml", "- 1\n- 2\n", "must be a mapping of column: type"),
        ("s.ddl", "id INT, id DOUBLE", "column 'id' is listed twice"),
        ("s.yaml", "id: {type: int, null_values: NA}\n", "column 'id': null_values must be a list of strings"),
        ("s.yaml", "id: {type: int, nulls: [NA]}\n", "column 'id': expected keys 'type' and optionally 'null_values'"),
    ],
)
def test_bad_schema_files(spark, tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError, match=message) as info:
        S.read_schema_file(str(path))
    assert str(path) in str(info.value)


def test_missing_schema_file(tmp_path):
    with pytest.raises(UserError, match="cannot read schema file"):
        S.read_schema_file(str(tmp_path / "nope.yaml"))
