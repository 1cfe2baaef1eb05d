"""Scenario `preference-defaults`: the per-objective defaults (learning rate, beta, epochs) of DPO and ORPO, measured.

SmolLM2-135M-Instruct (the shared GGUF dequantized once to safetensors) + LoRA r=16, trained through hft on the
real-data test's HH-RLHF harmless pairs in ../shared (chosen declines, rejected does not: tests/fixtures.py
hh_decline_pairs; seeded split: `-o train=N` pairs to train on, 64 held out), max_length 64, batch 8. Each variant is one (objective, learning rate, beta, epochs) point; the score is TRL's own
held-out `eval_rewards/accuracies` and `eval_rewards/margins` after training (untrained: 0 and 0, since policy ==
reference). ORPO's rewards are beta-scaled log-probabilities (no reference), so its accuracy is the comparable one.
Variant names: `dpo-lr5e-05-b0.1-e1` and so on; `-o variants=a,b` picks a subset. `--smoke`: tiny Llama, one variant.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from bench.harness import Plan, shared_dir
from bench.lora_memory import _smollm2_safetensors

HH = "data/hh_rlhf_harmless/test.jsonl"
HELD_OUT = 64
# A small sweep (2 cores): DPO's learning rate from 5e-5 (TRL's LoRA examples) up, then beta and epochs at one
# learning rate, and ORPO's learning rate. The training set is small (`train` pairs, 4 steps an epoch at 32), so the
# numbers choose defaults for short LoRA runs; bench/RESULTS.md says so.
SWEEP = (
    "dpo-lr5e-05-b0.1-e2", "dpo-lr2e-04-b0.1-e2", "dpo-lr1e-03-b0.1-e2", "dpo-lr3e-03-b0.1-e2",
    "dpo-lr1e-03-b0.5-e2", "dpo-lr1e-03-b0.1-e1", "orpo-lr2e-04-b0.1-e2", "orpo-lr1e-03-b0.1-e2",
)


def real_pairs(out: Path, n_train: int, n_held_out: int = HELD_OUT) -> dict[str, str]:
    """The real-data test's pairs (tests/fixtures.py hh_decline_pairs): train / validation jsonl files."""
    from tests.fixtures import hh_decline_pairs

    pairs = hh_decline_pairs(shared_dir() / HH, n_train + n_held_out)
    files = {}
    for role, part in (("train", pairs[:n_train]), ("validation", pairs[n_train:])):
        path = out / f"hh-{role}-{n_train}-{n_held_out}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
        files[role] = str(path)
    return files


def parse(variant: str) -> dict[str, Any]:
    """`dpo-lr5e-05-b0.1-e1` -> the training keys of that sweep point."""
    m = re.fullmatch(r"(dpo|orpo)-lr([0-9.e+-]+)-b([0-9.]+)-e([0-9.]+)", variant)
    if m is None:
        raise SystemExit(f"preference-defaults: variant {variant!r} is not OBJECTIVE-lrLR-bBETA-eEPOCHS")
    return {"objective": m[1], "learning_rate": float(m[2]), "beta": float(m[3]), "epochs": float(m[4])}


def plan(args: Any, out: Path) -> Plan:
    given = dict(args.option)
    if args.smoke:
        from tests.fixtures import build_tiny_llama, lm_preference_data

        model = out / "tiny-llama"
        if not (model / "config.json").is_file():
            build_tiny_llama(model)
        files = {k: str(v) for k, v in lm_preference_data(out / "pairs", {"train": 16, "validation": 8}).items()}
        config, variants = {"model": str(model), "files": files, "max_length": 64}, ["dpo-lr5e-03-b0.1-e1"]
    else:
        config = {"model": _smollm2_safetensors(out), "files": real_pairs(out, int(given.get("train", 32))),
                  "max_length": 64}
        variants = str(given["variants"]).split(",") if "variants" in given else list(SWEEP)
    config.update(batch_size=8, seed=42)
    return Plan(
        config=config, variants=variants,
        metrics=["held_out_reward_accuracy", "held_out_reward_margin", "train_loss", "wall_s"],
        repeats=1,
    )


def run_variant(variant: str, config: dict[str, Any], probe: Any) -> dict[str, Any]:
    import yaml

    from hftoolkit.commands.finetune import finetune
    from hftoolkit.recipe.schema import load_recipe

    run_dir = Path(os.environ.get("BENCH_RUN_DIR", "bench-run"))
    run_dir.mkdir(parents=True, exist_ok=True)
    point = parse(variant)
    recipe = {
        "task": "causal-lm",
        "model": {"name": config["model"]},
        "dataset": {"files": config["files"], "max_length": config["max_length"],
                    "columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "training": {**point, "batch_size": config["batch_size"], "seed": config["seed"], "report_to": ["none"],
                     "eval_strategy": "no", "save_strategy": "no", "logging_steps": 1, "eval_batch_size": 32},
        "output_dir": str(run_dir / "run"),
    }
    path = run_dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    finetune(load_recipe(path), command=f"bench preference-defaults {path}", overwrite=True)
    results = json.loads((run_dir / "run" / "train_results.json").read_text())
    validation = results["validation"]
    return {
        "held_out_reward_accuracy": validation["eval_rewards/accuracies"],
        "held_out_reward_margin": validation["eval_rewards/margins"],
        "train_loss": results["train"]["train_loss"],
    }
