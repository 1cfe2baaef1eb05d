"""Scenario `qlora-memory`: peak memory and speed of LoRA vs QLoRA (a 4-bit or 8-bit base through bitsandbytes).

SmolLM2-135M-Instruct (the shared GGUF dequantized once to safetensors, as lora-memory does), causal LM on
tiny_shakespeare cut into blocks of 256 tokens, batch 4, LoRA r=16 on PEFT's Llama default (q_proj, v_proj), through
hft's pipeline. Variants: lora, qlora-4bit (nf4, double quantization), qlora-8bit (LLM.int8).
`-gc` variants turn on training.gradient_checkpointing (QLoRA's usual companion), so activations weigh less.
Memory on CPU: the process's peak RSS above its RSS right after the imports (torch, transformers, peft, TRL,
bitsandbytes: the same for every variant), i.e. what the model, its adapter, optimizer state and activations add;
the weights' own size as loaded (`get_memory_footprint`); on GPU, torch.cuda.max_memory_allocated. Speed:
tokens/s of the training steps (bench/probe.py).
`--smoke` runs the tiny Llama fixture for 2 steps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bench.harness import Comparison, Plan, shared_dir
from bench.lora_memory import _smollm2_safetensors

TARGET = 0.6  # QLoRA 4-bit peak memory at most 0.6x LoRA's (issue 14)
BITS = {"lora": None, "qlora-4bit": 4, "qlora-8bit": 8, "lora-gc": None, "qlora-4bit-gc": 4}


def plan(args: Any, out: Path) -> Plan:
    given = dict(args.option)
    if args.smoke:
        from tests.fixtures import build_tiny_llama, lm_text_data

        model = out / "tiny-llama"
        if not (model / "config.json").is_file():
            build_tiny_llama(model)
        config = {"model": str(model), "train": str(lm_text_data(out / "text", {"train": 48})["train"]),
                  "max_length": 32, "steps": 2}
    else:
        config = {"model": _smollm2_safetensors(out), "train": str(shared_dir() / "data" / "tiny_shakespeare" / "input.txt"),
                  "max_length": 256, "steps": int(given.get("steps", 4))}
    config.update(batch_size=int(given.get("batch_size", 4)), seed=42, learning_rate=1e-4)
    return Plan(
        config=config,
        variants=list(BITS) if not args.smoke else ["lora", "qlora-4bit", "qlora-8bit"],
        metrics=["peak_above_imports_mb", "weights_mb", "train_rss_increase_mb", "rss_at_train_start_mb",
                 "gpu_peak_mem_mb", "tokens_per_s", "wall_s"],
        comparisons=[
            Comparison("peak RSS above imports QLoRA 4-bit / LoRA", "peak_above_imports_mb", "qlora-4bit", "lora",
                       target=TARGET, at_least=False),
            Comparison("peak RSS above imports QLoRA 8-bit / LoRA", "peak_above_imports_mb", "qlora-8bit", "lora"),
            Comparison("peak RSS above imports, gradient checkpointing: QLoRA 4-bit / LoRA", "peak_above_imports_mb",
                       "qlora-4bit-gc", "lora-gc", target=TARGET, at_least=False),
            Comparison("weights as loaded QLoRA 4-bit / LoRA", "weights_mb", "qlora-4bit", "lora"),
            Comparison("weights as loaded QLoRA 8-bit / LoRA", "weights_mb", "qlora-8bit", "lora"),
            Comparison("GPU max allocated QLoRA 4-bit / LoRA", "gpu_peak_mem_mb", "qlora-4bit", "lora",
                       target=TARGET, at_least=False),
            Comparison("tokens/s QLoRA 4-bit / LoRA", "tokens_per_s", "qlora-4bit", "lora"),
            Comparison("tokens/s QLoRA 8-bit / LoRA", "tokens_per_s", "qlora-8bit", "lora"),
        ],
        repeats=1 if args.smoke else 2,
    )


def run_variant(variant: str, config: dict[str, Any], probe: Any) -> dict[str, Any]:
    import resource

    import bitsandbytes  # noqa: F401  (imported by every variant before the baseline is taken)
    import peft  # noqa: F401
    import yaml

    from bench.probe import rss_mb
    from hftoolkit.commands.finetune import finetune
    from hftoolkit.recipe.schema import load_recipe

    probe.install()
    after_imports = rss_mb()
    run_dir = Path(os.environ.get("BENCH_RUN_DIR", "bench-run"))
    run_dir.mkdir(parents=True, exist_ok=True)
    bits = BITS[variant]
    recipe = {
        "task": "causal-lm",
        "model": {"name": config["model"], **({"quantization": {"bits": bits}} if bits else {})},
        "dataset": {"files": {"train": config["train"]}, "columns": {"text": "text"}, "batching": "blocks",
                    "max_length": config["max_length"], "max_samples": {"validation": 24}},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "training": {
            "max_steps": config["steps"], "batch_size": config["batch_size"], "learning_rate": config["learning_rate"],
            "seed": config["seed"], "report_to": ["none"], "eval_strategy": "no", "save_strategy": "no", "logging_steps": 1,
            "gradient_checkpointing": variant.endswith("-gc"),
        },
        "output_dir": str(run_dir / "run"),
    }
    path = run_dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    finetune(load_recipe(path), command=f"bench qlora-memory {path}", overwrite=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    manifest = json.loads((run_dir / "run" / "manifest.json").read_text())
    return {"peak_above_imports_mb": peak - after_imports, "rss_after_imports_mb": after_imports,
            "trainable_parameters": manifest["parameters"]["trainable"]}
