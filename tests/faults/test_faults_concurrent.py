"""Two runs of the same job on the same output at once (two ``spark-submit`` processes).

Either both succeed and the tables equal an undisturbed run's, or one fails with one line
naming the conflict (a Delta commit conflict, or gmm_fit's ``fit_dir`` lock) and the other
succeeds; the tables are never corrupt or mixed.
"""

from __future__ import annotations

import pytest
from harness import Job, assert_same_tables, check_committed_files, delta_tables, figure, run_records

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CONFLICT_WORDS = ("conflict", "concurrent", "held by run", "another run")


@pytest.mark.parametrize("job_name", ["gmm_fit", "tokenize", "ingest"])
def test_two_runs_on_one_output(spark, work, reference, job_name):
    ref_root, out_root = reference["root"], work / "concurrent"
    reference["lines"](job_name)  # the undisturbed run to compare with
    args = [str(a).replace(str(ref_root), str(out_root)) for a in reference["args"][job_name]]
    pair = [Job(job_name, *args), Job(job_name, *args)]
    results = [j.finish() for j in pair]
    codes = sorted(r.code for r in results)
    target = out_root / job_name
    for table in delta_tables(target):
        check_committed_files(table)
    assert codes in ([0, 0], [0, 1]), [r.job_lines()[-3:] for r in results]
    refused = [r for r in results if r.code != 0]
    line = ""
    if refused:
        errors = [x for x in refused[0].stderr if "error:" in x]
        assert len(errors) == 1 and any(w in errors[0] for w in CONFLICT_WORDS), refused[0].job_lines()[-5:]
        assert not any("Traceback" in x for x in refused[0].stdout + refused[0].stderr)
        line = errors[0].replace(str(work), "…")[:150]
    assert_same_tables(spark, target, ref_root / job_name, section="concurrent runs: final tables equal the "
                       "undisturbed run", label=job_name)
    statuses = sorted(r["status"] for r in run_records(target).values() if r["job"] == job_name)
    figure("concurrent runs", job=job_name, exits=codes, records=",".join(statuses),
           outcome="both succeeded" if codes == [0, 0] else "one refused", line=line)
    if job_name == "gmm_fit" and codes == [0, 0]:
        # no refusal: the runs did not overlap, and then the second found every column fitted
        assert sorted(r.record["counts"]["to_fit"] for r in results)[0] == 0
