"""Scenario `dpo-overhead`: hft's DPO vs TRL's `DPOTrainer` written by hand, same model, data and settings.

SmolLM2-135M-Instruct (the shared GGUF dequantized once to safetensors) + LoRA r=16 (q_proj, v_proj), real HH-RLHF
harmless pairs from ../shared (bench/preference_defaults.py real_pairs), max_length 128, batch 4, fp32 (hft's
`precision: auto` on a CPU without native bf16; the baseline is told the same), random batch order on both sides
(hft's length grouping off, so the batches hold the same pairs). The baseline is what TRL's documentation shows: `DPOTrainer(model, args=DPOConfig(...),
train_dataset=load_dataset("json", ...), processing_class=tokenizer, peft_config=LoraConfig(...))`.
Metric: non-padding tokens per second of the training steps (bench/probe.py counts every Trainer's steps).
Target: hft within 5% of TRL (hft must add no cost on top of the library it uses). `--smoke`: the tiny Llama.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.harness import Comparison, Plan
from bench.lora_memory import _smollm2_safetensors
from bench.preference_defaults import real_pairs

TARGET = 0.95
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}


def plan(args: Any, out: Path) -> Plan:
    given = dict(args.option)
    if args.smoke:
        from tests.fixtures import build_tiny_llama, lm_preference_data

        model = out / "tiny-llama"
        if not (model / "config.json").is_file():
            build_tiny_llama(model)
        files = {k: str(v) for k, v in lm_preference_data(out / "pairs", {"train": 16, "validation": 4}).items()}
        config = {"model": str(model), "files": files, "max_length": 64, "steps": 3}
    else:
        config = {"model": _smollm2_safetensors(out), "files": real_pairs(out, 64, 8), "max_length": 128,
                  "steps": int(given.get("steps", 6))}
    config.update(batch_size=4, learning_rate=5e-5, beta=0.1, seed=42)
    return Plan(
        config=config,
        variants=["trl", "hft"],
        metrics=["tokens_per_s", "samples_per_s", "time_to_first_step_s", "peak_rss_mb", "wall_s"],
        comparisons=[Comparison("tokens/s hft / TRL by hand", "tokens_per_s", "hft", "trl", target=TARGET)],
        repeats=1 if args.smoke else 2,
    )


def run_variant(variant: str, config: dict[str, Any], probe: Any) -> dict[str, Any]:
    probe.install()
    run_dir = Path(os.environ.get("BENCH_RUN_DIR", "bench-run"))
    run_dir.mkdir(parents=True, exist_ok=True)
    (_run_trl if variant == "trl" else _run_hft)(config, run_dir)
    return {}


def _run_trl(config: dict[str, Any], run_dir: Path) -> None:
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(config["model"])
    model = AutoModelForCausalLM.from_pretrained(config["model"])
    args = DPOConfig(
        output_dir=str(run_dir / "trl"), max_steps=config["steps"], per_device_train_batch_size=config["batch_size"],
        learning_rate=config["learning_rate"], beta=config["beta"], max_length=config["max_length"], seed=config["seed"],
        logging_steps=1, report_to="none", save_strategy="no", eval_strategy="no", gradient_checkpointing=False,
        bf16=False,
    )
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], task_type="CAUSAL_LM",
                      target_modules=["q_proj", "v_proj"])
    train = load_dataset("json", data_files=config["files"]["train"], split="train")
    DPOTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, peft_config=lora).train()


def _run_hft(config: dict[str, Any], run_dir: Path) -> None:
    import yaml

    from hftoolkit.commands.finetune import finetune
    from hftoolkit.recipe.schema import load_recipe

    recipe = {
        "task": "causal-lm",
        "model": {"name": config["model"]},
        # The same training pairs; the small validation file only keeps hft from carving some out of them.
        "dataset": {"files": config["files"], "max_length": config["max_length"],
                    "columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}},
        "lora": LORA,
        "training": {
            "objective": "dpo", "max_steps": config["steps"], "batch_size": config["batch_size"],
            "learning_rate": config["learning_rate"], "beta": config["beta"], "seed": config["seed"],
            "precision": "fp32", "group_by_length": False, "report_to": ["none"], "eval_strategy": "no",
            "save_strategy": "no", "logging_steps": 1,
        },
        "output_dir": str(run_dir / "hft"),
    }
    path = run_dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    finetune(load_recipe(path), command=f"bench dpo-overhead {path}", overwrite=True)
