"""databricks.yml as data: valid against the bundle schema, dev isolated from prod, one
workflow whose tasks run after the tables they read, and every task runnable by its entry point."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from pipelines import delta
from tests.stage_tables import OUTPUT_TABLES

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO.parent / "shared" / "databricks" / "bundle_schema.json"
# What the CLI fills in at deploy time, for rendering targets here.
WORKSPACE = {"workspace.current_user.short_name": "jdoe", "workspace.current_user.userName": "jdoe@corp"}
TARGETS = ("dev", "dev_serverless", "prod")
# Supported Databricks Runtime LTS releases (docs.databricks.com release notes, "Supported LTS releases").
LTS_RUNTIMES = {"17.3", "16.4", "15.4"}
LEGACY_SECURITY_MODES = {"NONE", "SINGLE_USER", "USER_ISOLATION"}


@pytest.fixture(scope="module")
def bundle() -> dict:
    return yaml.safe_load((REPO / "databricks.yml").read_text())


@pytest.fixture(scope="module")
def scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


# --------------------------------------------------------------------------- rendering a target

_KEYED_LISTS = {"tasks": "task_key", "job_clusters": "job_cluster_key", "environments": "environment_key"}


def _merge(base, override, key=None):
    """The CLI's target override: maps merge, task/cluster/environment lists merge by their key."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = _merge(base[k], v, k) if k in base else copy.deepcopy(v)
        return out
    if key in _KEYED_LISTS and isinstance(base, list):
        ident = _KEYED_LISTS[key]
        out = [dict(item) for item in base]
        index = {item[ident]: i for i, item in enumerate(out)}
        for item in override:
            if item[ident] in index:
                out[index[item[ident]]] = _merge(out[index[item[ident]]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(override)


def _substitute(value, refs):
    if isinstance(value, dict):
        return {k: _substitute(v, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, refs) for v in value]
    if not isinstance(value, str):
        return value
    for _ in range(5):  # references to references (a variable set to ${workspace...}); unknown ones stay
        value = re.sub(r"\$\{([\w.]+)\}", lambda m: str(refs.get(m.group(1), m.group(0))), value)
    return value


def render(bundle: dict, target: str) -> dict:
    """The bundle as the CLI deploys ``target``: overrides merged, ${...} references resolved."""
    spec = bundle["targets"][target]
    merged = {k: v for k, v in bundle.items() if k != "targets"}
    merged = _merge(merged, {k: v for k, v in spec.items() if k not in ("variables", "mode", "default")})
    values = {name: var.get("default") for name, var in bundle["variables"].items()}
    values.update(spec.get("variables", {}))
    refs = {**WORKSPACE, "bundle.target": target, "bundle.name": bundle["bundle"]["name"]}
    refs.update({f"var.{k}": v for k, v in values.items() if v is not None})
    refs.update({f"var.{k}": _substitute(v, refs) for k, v in values.items() if v is not None})
    resources = _substitute(merged["resources"], refs)
    for kind in ("schemas", "volumes"):
        for key, res in resources.get(kind, {}).items():
            refs[f"resources.{kind}.{key}.name"] = res["name"]
    return _substitute(merged, refs)


def job_parameters(job: dict) -> dict[str, str]:
    return {p["name"]: p["default"] for p in job["parameters"]}


def task_argv(job: dict, task: dict) -> list[str]:
    """A task's command line with the job parameters' defaults filled in."""
    params = job_parameters(job)
    argv = task["python_wheel_task"]["parameters"]
    return [re.sub(r"\{\{job\.parameters\.(\w+)\}\}", lambda m: params[m.group(1)], a) for a in argv]


def _load_job(path: Path):
    spec = importlib.util.spec_from_file_location(f"job_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def job_file(scripts: dict[str, str], entry_point: str) -> Path:
    module, _, func = scripts[entry_point].partition(":")
    assert module.startswith("pipelines.jobs.") and func == "main", scripts[entry_point]
    return REPO / "jobs" / f"{module.removeprefix('pipelines.jobs.')}.py"


# --------------------------------------------------------------------------- the rules


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


def test_targets_and_variables(bundle):
    assert set(bundle["targets"]) == set(TARGETS)
    dev = bundle["targets"]["dev"]
    assert dev["mode"] == "development" and dev["default"] is True
    for name in ("dev", "dev_serverless"):
        presets = bundle["targets"][name]["presets"]
        assert presets["trigger_pause_status"] == "PAUSED" and presets["artifacts_dynamic_version"] is True
    prod = bundle["targets"]["prod"]
    assert prod["mode"] == "production" and prod["workspace"]["root_path"] and prod["permissions"]
    assert prod["run_as"]["service_principal_name"]
    for name, var in bundle["variables"].items():
        assert var.get("description"), f"variable {name} needs a description"
    # Failure mail goes to a variable with no (example) default: prod must name a real address.
    assert "default" not in bundle["variables"]["alert_email"]
    assert "example.com" not in (REPO / "databricks.yml").read_text()


def test_dev_storage_and_tables_are_isolated_from_prod(bundle):
    seen = {}
    for target in TARGETS:
        rendered = render(bundle, target)
        (job,) = rendered["resources"]["jobs"].values()
        params = job_parameters(job)
        schema = rendered["resources"]["schemas"]["pipelines"]
        volume = rendered["resources"]["volumes"]["files"]
        # The job writes into the schema and Volume the bundle declares for this target.
        assert params["schema"] == schema["name"] == volume["schema_name"]
        assert params["storage_root"] == f"/Volumes/{schema['catalog_name']}/{schema['name']}/{volume['name']}"
        seen[target] = (params["catalog"], params["schema"], params["storage_root"])
    assert "jdoe" in seen["dev"][1] and "jdoe" in seen["dev_serverless"][1]
    for dev in ("dev", "dev_serverless"):
        assert seen[dev][1] != seen["prod"][1] and seen[dev][2] != seen["prod"][2]


def test_one_workflow_runs_each_task_after_the_tables_it_reads(bundle, scripts):
    for target in TARGETS:
        (job,) = render(bundle, target)["resources"]["jobs"].values()
        tasks = {t["task_key"]: t for t in job["tasks"]}
        deps = {k: {d["task_key"] for d in t.get("depends_on", [])} for k, t in tasks.items()}
        writes, reads = {}, {}
        for key, task in tasks.items():
            path = job_file(scripts, task["python_wheel_task"]["entry_point"])
            args = _load_job(path).build_parser().parse_args(task_argv(job, task))
            ns = args.tables
            root = getattr(args, "fit_dir", None) if path.stem == "gmm_fit" else args.output
            delta.use_tables(ns["catalog"], ns["schema"], roots=[root])
            try:
                stage = "tokenize" if path.stem == "tokenize_job" else path.stem
                writes[key] = {delta.table_target(f"{root}/{t}") for t in OUTPUT_TABLES[stage]}
                read = set() if path.stem == "ingest" else {args.current if path.stem == "drift" else args.input}
                if path.stem == "gmm_transform":
                    delta.use_tables(ns["catalog"], ns["schema"], roots=[args.fit_dir])
                    read |= {delta.table_target(f"{args.fit_dir}/{t}") for t in OUTPUT_TABLES["gmm_fit"]}
            finally:
                delta.use_tables(None, None)
            assert all(delta.is_table_name(t) for t in read | writes[key]), (target, key, read, writes[key])
            reads[key] = read

        for key, read in reads.items():
            written_before = set().union(*[writes[k] for k in _upstream(deps, key)]) if deps[key] else set()
            assert read <= written_before, f"{target}: {key} reads {sorted(read - written_before)} before any task it depends on writes it"
        assert deps["ingest"] == set() and {"gmm_fit", "tokenize", "cluster_eval"} <= {k for k in tasks if "ingest" in _upstream(deps, k)}
        assert "gmm_fit" in _upstream(deps, "gmm_transform")


def _upstream(deps: dict[str, set[str]], key: str) -> set[str]:
    """Every task ``key`` runs after (depends_on, transitively)."""
    seen, todo = set(), list(deps[key])
    while todo:
        k = todo.pop()
        if k not in seen:
            seen.add(k)
            todo.extend(deps[k])
    return seen


def test_every_task_has_compute_and_the_wheel(bundle):
    for target in TARGETS:
        (job,) = render(bundle, target)["resources"]["jobs"].values()
        clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job.get("job_clusters", [])}
        environments = {e["environment_key"]: e["spec"] for e in job.get("environments", [])}
        for task in job["tasks"]:
            where = f"{target}: task {task['task_key']}"
            if "environment_key" in task:  # serverless
                assert "job_cluster_key" not in task and "libraries" not in task, where
                assert "./dist/*.whl" in environments[task["environment_key"]]["dependencies"], where
            else:
                cluster = clusters[task["job_cluster_key"]]
                assert {"whl": "./dist/*.whl"} in task["libraries"], where
                assert cluster["autoscale"]["min_workers"] <= cluster["autoscale"]["max_workers"], where
                assert "num_workers" not in cluster, where
                assert cluster["data_security_mode"] not in LEGACY_SECURITY_MODES, where
                assert not cluster["data_security_mode"].startswith("LEGACY_"), where
                major_minor = re.match(r"(\d+\.\d+)\.x-scala2\.13$", cluster["spark_version"])
                assert major_minor and major_minor.group(1) in LTS_RUNTIMES, f"{where}: {cluster['spark_version']} is not an LTS"
    serverless = render(bundle, "dev_serverless")["resources"]["jobs"]["pipelines"]
    assert "job_clusters" not in serverless and all("environment_key" in t for t in serverless["tasks"])


def test_job_conventions(bundle):
    (job,) = render(bundle, "prod")["resources"]["jobs"].values()
    assert job["schedule"]["timezone_id"] == "UTC" and job["max_concurrent_runs"] == 1
    assert int(job["timeout_seconds"]) > 0
    (rule,) = job["health"]["rules"]
    assert rule["metric"] == "RUN_DURATION_SECONDS" and 0 < int(rule["value"]) < int(job["timeout_seconds"])
    assert job["email_notifications"]["on_failure"] == ["${var.alert_email}"]  # no value until prod sets one
    assert render(bundle, "dev")["resources"]["jobs"]["pipelines"]["email_notifications"]["on_failure"] == ["jdoe@corp"]
    assert {"input_path", "k_min", "k_max", "gmm_columns", "tokenize_columns"} <= set(job_parameters(job))
    assert all(t["max_retries"] >= 1 for t in job["tasks"])


def test_every_task_entry_point_accepts_its_parameters(bundle, scripts):
    seen = set()
    for target in TARGETS:
        (job,) = render(bundle, target)["resources"]["jobs"].values()
        for task in job["tasks"]:
            wheel_task = task["python_wheel_task"]
            assert wheel_task["package_name"] == "pipelines"
            path = job_file(scripts, wheel_task["entry_point"])
            argv = task_argv(job, task)
            assert not any("${" in a or "{{" in a for a in argv), argv
            _load_job(path).build_parser().parse_args(argv)  # exits (SystemExit) on any unknown or bad flag
            seen.add(path.stem)
    assert {"cluster_eval", "ingest", "drift", "gmm_fit", "gmm_transform", "tokenize_job"} <= seen


def test_every_job_file_has_a_console_script(scripts):
    assert {job_file(scripts, name).stem for name in scripts} == {p.stem for p in (REPO / "jobs").glob("*.py")}


def test_tables_flag_is_a_two_part_namespace():
    from pipelines.runs import table_namespace

    assert table_namespace("main.pipelines") == {"catalog": "main", "schema": "pipelines"}
    for bad in ("main", "a.b.c", "main.pipe-lines", ".x"):
        with pytest.raises(Exception, match="CATALOG.SCHEMA"):
            table_namespace(bad)


@pytest.mark.slow
def test_wheel_contains_package_jobs_and_entry_points(tmp_path, scripts):
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("pipelines-*.whl")
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    for expected in ("pipelines/delta.py", "pipelines/conf/base.yaml", "pipelines/conf/local.yaml", "pipelines/conf/databricks.yaml"):
        assert expected in names, f"{expected} missing from {wheel.name}"
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = archive.read(entry_points).decode()
    for name, target in scripts.items():
        assert f"{name} = {target}" in text
    # Each entry point's module runs from the unpacked wheel alone (what python_wheel_task imports).
    site = tmp_path / "site"
    archive.extractall(site)
    for target in scripts.values():
        module = target.partition(":")[0]
        result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=site,
                                env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
        assert result.returncode == 0 and "usage:" in result.stdout, (module, result.stderr[-2000:])


@pytest.mark.parametrize("job", ["cluster_eval", "ingest", "drift", "gmm_fit", "gmm_transform", "tokenize_job", "pipeline"])
def test_job_file_runs_as_a_script(job):
    # As a script, jobs/ is first on sys.path: no job file may shadow a standard library module.
    result = subprocess.run([sys.executable, str(REPO / "jobs" / f"{job}.py"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
