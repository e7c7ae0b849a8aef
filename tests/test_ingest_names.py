"""Safe column names (pure Python, no Spark)."""

from __future__ import annotations

import pytest

from pipelines import fs
from pipelines.ingest.names import METADATA_COLUMNS, safe_name, safe_names


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ("Amount", "amount"),
        ("first name", "first_name"),
        ("a.b", "a_b"),
        ("a/b", "a_b"),
        ("../x", "x"),
        ("..", "col_1"),
        ("", "col_1"),
        (None, "col_1"),
        ("Température (°C)", "temperature_c"),
        ("名前", "col_1"),
        ("2nd value", "c_2nd_value"),
        ("__private__", "private"),
        ("x" * 300, "x" * 100),
        ("tab\there\nnewline", "tab_here_newline"),
    ],
)
def test_safe_name(original, expected):
    assert safe_name(original, position=0) == expected


def test_safe_names_unique_and_order_kept():
    names = ["id", "ID", "id_2", "", "", "a b", "a.b", "a/b", "../x", "x"]
    assert safe_names(names) == ["id", "id_3", "id_2", "col_4", "col_5", "a_b", "a_b_2", "a_b_3", "x", "x_2"]


def test_safe_names_are_valid_single_path_components_and_never_metadata_columns():
    names = ["../../etc/passwd", "/abs", "a\\b", ".", "_row_id", "_source_file", "\x00", "..\\..", "C:\\x"]
    result = safe_names(names)
    assert len(set(result)) == len(result)
    for name in result:
        fs.join("/out", name)  # raises on anything that could leave the root
        assert name not in METADATA_COLUMNS
        assert not name.startswith("_")
        assert name == name.lower() and name.replace("_", "").isalnum()


def test_documented_examples():
    """The README's examples (ingest) and the diabetes export's header, as documented."""
    from pipelines.datasets import DIABETES_HEADER

    assert safe_names(["Weight (kg/m²)", "Amount (€)", "Amount", "2nd", "€"]) == [
        "weight_kg_m2", "amount", "amount_2", "c_2nd", "col_5"]
    assert safe_names(DIABETES_HEADER) == [
        "age_years", "sex", "bmi_kg_m2", "blood_pressure_mm_hg", "total_cholesterol_tc", "ldl", "hdl", "tc_hdl",
        "log_triglycerides_ltg", "blood_sugar_glu", "progression_1_yr",
    ]
