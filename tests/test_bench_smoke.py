"""The benchmark harness keeps working: a tiny `python -m bench text-cls --smoke` run and the summary arithmetic.

No timing assertions (speed is measured by the benchmarks themselves, see bench/RESULTS.md): only that every
field is there and every measured number is positive.
"""

from __future__ import annotations

import json
import subprocess
import sys

from bench.harness import Comparison, RunResult, compare, summarise, table
from tests.fixtures import REPO


def test_text_cls_smoke_writes_the_json_fields(tmp_path, tiny_bert):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "text-cls", "--smoke", "-o", f"model={tiny_bert}", "--json", str(out),
         "--out", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["scenario"] == "text-cls" and report["smoke"] is True
    assert report["machine"]["nproc"] >= 1 and len(report["load_average"]["start"]) == 3
    for variant in ("baseline", "hft"):
        stats = report["summary"][variant]
        for metric in ("samples_per_s", "tokens_per_s", "padded_tokens_per_s", "peak_rss_mb", "time_to_first_step_s", "wall_s"):
            assert stats[metric]["median"] > 0, (variant, metric, stats.get(metric))
        assert 0 <= stats["accuracy"]["median"] <= 1
    hft_run = next(r for r in report["runs"] if r["variant"] == "hft")
    # Dynamic padding: hft's batches hold (almost) no padding, the baseline's are padded to max_length.
    assert hft_run["metrics"]["padded_tokens_total"] < next(
        r for r in report["runs"] if r["variant"] == "baseline")["metrics"]["padded_tokens_total"]
    ratio = next(c for c in report["comparisons"] if c["metric"] == "samples_per_s")
    assert ratio["median"] > 0 and ratio["target"] == 2.5 and isinstance(ratio["met"], bool)
    assert "| variant" in proc.stdout and "samples/s hft / baseline" in proc.stdout


def test_summary_pairs_runs_by_repeat():
    runs = [
        RunResult("a", 0, True, {"x": 10.0}, (1, 1, 1), ""),
        RunResult("b", 0, True, {"x": 5.0}, (1, 1, 1), ""),
        RunResult("a", 1, True, {"x": 30.0}, (1, 1, 1), ""),
        RunResult("b", 1, True, {"x": 10.0}, (1, 1, 1), ""),
        RunResult("b", 2, False, {"x": 1.0}, (1, 1, 1), ""),  # failed runs are left out
    ]
    summary = summarise(runs, ["a", "b"])
    assert summary["b"]["x"] == {"median": 7.5, "min": 5.0, "max": 10.0, "n": 2}
    [row] = compare(runs, [Comparison("a/b", "x", "a", "b", target=2.5)])
    assert row["ratios"] == [2.0, 3.0] and row["median"] == 2.5 and row["met"] is True
    [low] = compare(runs, [Comparison("a/b", "x", "a", "b", target=2.0, at_least=False)])
    assert low["met"] is False
    assert "20 [10-30]" in table(summary, ["a", "b"], ["x"])
