"""The benchmark harness keeps working: a tiny `--smoke` run of every scenario and the summary arithmetic.

No timing assertions (speed is measured by the benchmarks themselves, see bench/RESULTS.md): only that every
field is there, every measured number is positive and the scenarios' correctness checks (equal per-example loss
packed vs padded, no weights opened by `hft validate`) pass.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.harness import Comparison, RunResult, compare, summarise, table
from tests.fixtures import REPO


def run_smoke(tmp_path, scenario, *extra):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", scenario, "--smoke", *extra, "--json", str(out), "--out", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["scenario"] == scenario and report["smoke"] is True
    assert [r["variant"] for r in report["runs"] if not r["ok"]] == []
    assert report["checks"] == [] or all(c["ok"] for c in report["checks"]), report["checks"]
    return report, proc.stdout


def test_text_cls_smoke_writes_the_json_fields(tmp_path, tiny_bert):
    report, stdout = run_smoke(tmp_path, "text-cls", "-o", f"model={tiny_bert}")
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
    assert "| variant" in stdout and "samples/s hft / baseline" in stdout


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


# Each scenario's smoke: (extra arguments, {variant: metrics that must be positive}).
SCENARIOS = {
    # Variants that differ only in batch order are left out of the smokes (the same code paths, one more process each).
    "clm-packing": (["--variants", "hft-packed,hft-padded,baseline,loss-check"],
                    {v: ["tokens_per_s", "samples_per_s", "peak_rss_mb", "time_to_first_step_s"]
                     for v in ("hft-packed", "hft-padded", "baseline")}),
    # strace variants left out to keep the suite fast; the traced ones check the same thing in-process.
    "startup": (["--variants", "hft-help,hft-validate,validate-traced,load-traced", "--repeats", "1"],
                {"hft-help": ["wall_s"], "hft-validate": ["wall_s"], "load-traced": ["weight_files_opened"]}),
    "preprocess": ([], {"first": ["tokenize_s", "prepare_s", "rows"], "cached": ["prepare_s", "rows"],
                        "map-nproc1": ["map_s"], "map-nproc2": ["map_s"]}),
    "lora-memory": (["--variants", "lora,full"], {v: ["peak_rss_mb", "train_peak_rss_mb", "samples_per_s"] for v in ("lora", "full")}),
    "qlora-memory": ([], {v: ["peak_above_imports_mb", "tokens_per_s"] for v in ("lora", "qlora-4bit", "qlora-8bit")}),
    "dpo-overhead": ([], {v: ["tokens_per_s", "samples_per_s", "peak_rss_mb"] for v in ("trl", "hft")}),
    "preference-defaults": ([], {"dpo-lr5e-03-b0.1-e1": ["train_loss", "wall_s"]}),
    "task-defaults": ([], {"sst2-lora-lr5e-03-e1": ["score", "train_loss", "wall_s"]}),
    "run-ner": ([], {v: ["samples_per_s", "tokens_per_s", "time_to_first_step_s", "entities"] for v in ("hft", "baseline")}),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario_smoke(tmp_path, scenario):
    extra, positive = SCENARIOS[scenario]
    report, _ = run_smoke(tmp_path, scenario, *extra)
    for variant, metrics in positive.items():
        for metric in metrics:
            assert report["summary"][variant][metric]["median"] > 0, (variant, metric)
    if scenario == "clm-packing":
        assert report["summary"]["loss-check"]["max_abs_loss_diff"]["median"] < 1e-4
        # Packing leaves (almost) no padding; padding to max_length leaves most of the batch padding.
        packed, baseline = report["summary"]["hft-packed"], report["summary"]["baseline"]
        assert packed["padded_tokens_total"]["median"] < baseline["padded_tokens_total"]["median"]
    elif scenario == "startup":
        assert report["summary"]["validate-traced"]["weight_files_opened"]["median"] == 0
    elif scenario == "preprocess":
        assert report["summary"]["cached"]["rows"]["median"] == report["summary"]["first"]["rows"]["median"]
    elif scenario == "lora-memory":
        lora, full = report["summary"]["lora"], report["summary"]["full"]
        assert lora["trainable_parameters"]["median"] < full["trainable_parameters"]["median"]
    elif scenario == "qlora-memory":
        ratio = next(c for c in report["comparisons"] if c["metric"] == "peak_above_imports_mb")
        assert ratio["median"] > 0 and ratio["target"] == 0.6
    elif scenario == "dpo-overhead":
        assert next(c for c in report["comparisons"] if c["metric"] == "tokens_per_s")["target"] == 0.95
    elif scenario == "run-ner":
        assert next(c for c in report["comparisons"] if c["metric"] == "samples_per_s")["target"] == 1.3
        assert all(0 <= report["summary"][v]["f1"]["median"] <= 1 for v in ("hft", "baseline"))
        assert [c["check"] for c in report["checks"]] == ["entity F1 hft vs baseline"]
    elif scenario == "preference-defaults":
        assert 0 <= report["summary"]["dpo-lr5e-03-b0.1-e1"]["held_out_reward_accuracy"]["median"] <= 1
    elif scenario == "task-defaults":
        point = report["summary"]["sst2-lora-lr5e-03-e1"]
        assert 0 <= point["score"]["median"] <= 1 and point["resolved_learning_rate"]["median"] == 5e-3
