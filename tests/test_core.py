"""Config, run summaries, the job wrapper and the session helper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import fs
from pipelines.config import load_config
from pipelines.errors import UserError
from pipelines.runs import JobArgumentParser, add_config_flag, execute, int_list
from pipelines.spark import get_spark


def test_defaults_load_and_flags_override():
    cfg = load_config(None, overrides={"cluster_eval": {"k_max": 5, "seed": None}})
    assert cfg.cluster_eval.k_max == 5
    assert cfg.cluster_eval.seed == 42, "an absent flag (None) must not hide the config value"


def test_user_file_overrides_base(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("cluster_eval:\n  k_min: 3\n  features: [a, b]\n")
    cfg = load_config(p)
    assert cfg.cluster_eval.k_min == 3 and cfg.cluster_eval.features == ["a", "b"]
    assert cfg.cluster_eval.k_max == 10


@pytest.mark.parametrize(
    "text, expected",
    [
        ("cluster_eval:\n  k_maxx: 3\n", r"c\.yaml: unknown config key 'cluster_eval\.k_maxx'"),
        ("cluster_eval:\n  k_max: three\n", r"c\.yaml: config key 'cluster_eval\.k_max': .*integer"),
        ("nosuchsection:\n  a: 1\n", r"c\.yaml: unknown config key 'nosuchsection'"),
        ("gmm_fit:\n  mode: fancy\n", r"c\.yaml: config key 'gmm_fit\.mode'"),
        ("cluster_eval: [1, 2\n", r"c\.yaml: config file is not valid YAML at line"),
        ("- a\n- b\n", r"c\.yaml: config file must be a mapping"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path, text, expected):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(UserError, match=expected):
        load_config(p)


def test_yaml_tags_are_not_executed(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("cluster_eval: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(p)


def _toy_job(argv, stage):
    parser = JobArgumentParser(prog="toy")
    parser.add_argument("--output")
    parser.add_argument("--k", type=int_list)
    add_config_flag(parser)
    return execute("cluster_eval", parser, argv, stage)


def test_execute_writes_summary_and_prints_it_last(spark, tmp_path, capsys):
    def stage(spark_, cfg, run):
        assert spark_ is spark, "get_spark must reuse the active session"
        run.counts["rows"] = 3
        run.outputs["x"] = fs.join(run.output, "x")

    code = _toy_job(["--output", str(tmp_path), "--k", "2,3"], stage)
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    assert summary["status"] == "succeeded" and summary["counts"] == {"rows": 3}
    assert summary["params"]["k"] == [2, 3]
    on_disk = json.loads(Path(tmp_path, "_runs", f"{summary['run_id']}.json").read_text())
    assert on_disk["run_id"] == summary["run_id"]


def test_execute_user_error_is_one_line_exit_2(spark, tmp_path, capsys):
    def stage(spark_, cfg, run):
        raise UserError("data.csv: column 'x' is not numeric\n(second line folded)")

    assert _toy_job(["--output", str(tmp_path)], stage) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: data.csv: column 'x' is not numeric (second line folded)"
    assert not any("Traceback" in line for line in err)


def test_execute_bad_config_exits_2_naming_key(tmp_path, capsys):
    cfgfile = tmp_path / "bad.yaml"
    cfgfile.write_text("cluster_eval:\n  bogus: 1\n")
    assert _toy_job(["--config", str(cfgfile)], lambda *a: None) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {cfgfile}: unknown config key 'cluster_eval.bogus'"


def test_bad_flag_value_exits_2_in_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        _toy_job(["--k", "2,x"], lambda *a: None)
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("bad", ["..", "a/b", "", ".", "x\x00"])
def test_fs_join_refuses_escaping_names(bad):
    with pytest.raises(ValueError):
        fs.join("/out", bad)


def test_get_spark_reuses_active_session(spark):
    assert get_spark() is spark
    assert spark.conf.get("spark.sql.parquet.outputTimestampType") == "TIMESTAMP_MICROS"


def _run_java_check(tmp_path, java_version: str | None):
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("awk", "cut", "bash", "env"):  # what the script itself needs
        target = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        (bin_dir / tool).symlink_to(target)
    if java_version is not None:
        fake = bin_dir / "java"
        fake.write_text(f'#!/bin/sh\necho \'openjdk version "{java_version}" 2020-01-01\' >&2\n')
        fake.chmod(0o755)
    env = {"PATH": str(bin_dir)}
    script = Path(__file__).resolve().parents[1] / "scripts" / "check_java.sh"
    return subprocess.run([str(bin_dir / "bash"), str(script)], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("version, ok", [(None, False), ("11.0.2", False), ("1.8.0_292", False), ("17.0.15", True), ("21", True)])
def test_java_check_stops_with_one_line(tmp_path, version, ok):
    result = _run_java_check(tmp_path, version)
    if ok:
        assert result.returncode == 0 and result.stderr == ""
    else:
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Java 17+ is required" in lines[0]
