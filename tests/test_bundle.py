"""databricks.yml: valid against the bundle schema, every task runnable by its job file."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# ../shared/databricks/ beside the checkout; a git worktree (e.g. wt/18) finds it further up
_SCHEMA_PATH = Path("shared", "databricks", "bundle_schema.json")
SCHEMA = next((p / _SCHEMA_PATH for p in REPO.parents if (p / _SCHEMA_PATH).exists()), REPO.parent / _SCHEMA_PATH)
SAMPLE_VALUES = {
    "storage_root": "/Volumes/main/default/pipelines",
    "input_path": "/Volumes/main/default/raw/*.csv",
    "input_format": "csv",
    "gmm_columns": "amount,score",
    "gmm_mode": "bayesian",
    "tokenize_columns": "amount,score",
    "tokenize_bins": "64",
    "k_min": "2",
    "k_max": "8",
    "alert_email": "a@example.com",
    "spark_version": "19.x-scala2.13",
    "node_type_id": "i3.xlarge",
}


@pytest.fixture(scope="module")
def bundle() -> dict:
    return yaml.safe_load((REPO / "databricks.yml").read_text())


def _tasks(bundle):
    for job_key, job in bundle["resources"]["jobs"].items():
        for task in job["tasks"]:
            yield job_key, task


def test_bundle_validates_against_schema(bundle):
    if not SCHEMA.exists():
        pytest.skip(f"bundle schema not found at {SCHEMA} (it ships in ../shared/databricks/)")
    import jsonschema

    # The schema's patterns use Unicode classes (\p{L}, \p{N}) that Python's re lacks;
    # \w (Unicode word characters) is a slightly wider stand-in for both.
    text = SCHEMA.read_text().replace("\\\\p{L}", "\\\\w").replace("\\\\p{N}", "\\\\w")
    validator = jsonschema.Draft202012Validator(json.loads(text))
    errors = sorted(validator.iter_errors(bundle), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10])


def test_bundle_has_dev_and_prod_targets(bundle):
    assert bundle["targets"]["dev"]["mode"] == "development" and bundle["targets"]["dev"]["default"] is True
    assert bundle["targets"]["dev"]["presets"]["trigger_pause_status"] == "PAUSED"
    prod = bundle["targets"]["prod"]
    assert prod["mode"] == "production" and prod["workspace"]["root_path"] and prod["permissions"]
    for name, var in bundle["variables"].items():
        assert var.get("description"), f"variable {name} needs a description"


def test_jobs_have_schedules_alerts_and_retries(bundle):
    for job in bundle["resources"]["jobs"].values():
        assert job["schedule"]["timezone_id"] == "UTC"
        assert job["email_notifications"]["on_failure"]
        assert all(t["max_retries"] >= 1 for t in job["tasks"])


def test_gmm_pipeline_task_graph(bundle):
    tasks = {t["task_key"]: t for t in bundle["resources"]["jobs"]["gmm_pipeline"]["tasks"]}
    deps = {k: [d["task_key"] for d in t.get("depends_on", [])] for k, t in tasks.items()}
    assert deps == {"ingest": [], "drift": ["ingest"], "gmm_fit": ["drift"], "gmm_transform": ["gmm_fit"],
                    "tokenize": ["ingest"]}


def _load_job(path: Path):
    spec = importlib.util.spec_from_file_location(f"job_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _substitute(value: str) -> str:
    return re.sub(r"\$\{var\.(\w+)\}", lambda m: SAMPLE_VALUES[m.group(1)], value)


def test_every_task_file_exists_and_accepts_its_parameters(bundle):
    seen = set()
    for job_key, task in _tasks(bundle):
        python_file = REPO / task["spark_python_task"]["python_file"]
        assert python_file.is_file(), f"{job_key}.{task['task_key']}: {python_file} does not exist"
        params = [_substitute(p) for p in task["spark_python_task"].get("parameters", [])]
        assert not any("${" in p for p in params), params
        job = _load_job(python_file)
        job.build_parser().parse_args(params)  # exits (SystemExit) on any unknown or bad flag
        seen.add(python_file.stem)
    assert {"cluster_eval", "ingest", "drift", "gmm_fit", "gmm_transform", "tokenize_job"} <= seen


@pytest.mark.slow
def test_wheel_contains_package_and_default_conf(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("pipelines-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("pipelines/delta.py", "pipelines/conf/base.yaml", "pipelines/conf/local.yaml", "pipelines/conf/databricks.yaml"):
        assert expected in names, f"{expected} missing from {wheel.name}"


@pytest.mark.parametrize("job", ["cluster_eval", "ingest", "drift", "gmm_fit", "gmm_transform", "tokenize_job", "pipeline"])
def test_job_file_runs_as_a_script(job):
    # As a script, jobs/ is first on sys.path: no job file may shadow a standard library module.
    result = subprocess.run([sys.executable, str(REPO / "jobs" / f"{job}.py"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
