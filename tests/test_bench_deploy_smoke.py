"""`python -m bench deploy --smoke`: the deploy benchmark's harness works end to end on the tiny fixtures
(train, export, three runtimes, two servers); no timing assertions, as in tests/test_bench_smoke.py."""

from __future__ import annotations

from tests.test_bench_smoke import run_smoke


def test_deploy_smoke_measures_every_runtime_and_both_servers(tmp_path, tiny_bert):
    report, stdout = run_smoke(tmp_path, "deploy", "-o", f"model={tiny_bert}")
    summary = report["summary"]
    prepare = summary["prepare"]
    assert prepare["opset"]["median"] >= 18 and prepare["parity_max_abs_diff"]["median"] <= 1e-4
    assert prepare["model_mb"]["median"] > prepare["int8_mb"]["median"] > 0
    for runtime in ("pytorch-fp32", "onnx-fp32", "onnx-int8"):
        for metric in ("b1_p50_ms", "b1_p95_ms", "b1_per_s", "b32_samples_per_s"):
            assert summary[runtime][metric]["median"] > 0, (runtime, metric)
        assert 0 <= summary[runtime]["accuracy"]["median"] <= 1 and summary[runtime]["rows"]["median"] == 64
    for server in ("serve-batched", "serve-unbatched"):
        stats = summary[server]
        assert stats["requests"]["median"] == 48 and stats["requests_per_s"]["median"] > 0 and stats["exit_code"]["median"] == 0
        assert stats["p95_ms"]["median"] >= stats["p50_ms"]["median"] > 0
    assert summary["serve-unbatched"]["mean_batch"]["median"] == 1  # --max-batch 1: one input per model call
    targets = {c["label"]: c for c in report["comparisons"] if c.get("target")}
    assert set(targets) == {"batch-1 throughput onnx-int8 / pytorch-fp32", "server requests/s micro-batching on / off"}
    assert all(isinstance(c["met"], bool) for c in targets.values())
    assert "| variant" in stdout and "micro-batching on / off" in stdout
