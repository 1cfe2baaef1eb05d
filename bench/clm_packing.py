"""Scenario `clm-packing`: causal-LM fine-tuning on variable-length text, packed vs padded batches, same model.

Data: tiny_shakespeare from ../shared cut into paragraphs (speeches: 1 to 100+ lines, so lengths vary a lot),
max_length 256. Model: a small Llama (4 layers, hidden 512, grouped-query attention) built here from the
tests/fixtures.py tiny-Llama builder's tokenizer, random weights (throughput and loss equality do not need
pretrained ones); `-o hidden=...` etc. change its shape. LoRA with hft's defaults, same steps/batch/lr/seed.
- hft-packed: `dataset.batching: packed` (rows of at most max_length, positions restarting per example), with
  hft's default length-grouped batches; hft-packed-random: the same with random batches;
- hft-padded: `dataset.batching: padded` with random batches (group_by_length false): padded to the longest
  example of each batch (the comparison the packing target is about);
- hft-padded-grouped: padded with hft's default length-grouped batches;
- baseline: the stock way, every example padded to max_length, default collator and settings;
- loss-check: not timed; the same 32 examples through one model, padded vs packed: per-example mean losses must
  agree (packing must not let examples see each other).
`--smoke` uses the tiny Llama fixture itself and the fixture text data (no ../shared needed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bench.harness import Comparison, Plan, shared_dir

METRICS = [
    "tokens_per_s", "padded_tokens_per_s", "samples_per_s", "time_to_first_step_s", "wall_s", "peak_rss_mb",
    "gpu_peak_mem_mb", "mfu", "max_abs_loss_diff",
]
LOSS_TOLERANCE = 1e-4  # fp32: packing changes matmul shapes, so per-example losses may differ in the last digits
VARIANTS = {
    "hft-packed": {"batching": "packed", "group_by_length": True},
    "hft-packed-random": {"batching": "packed", "group_by_length": False},
    "hft-padded": {"batching": "padded", "group_by_length": False},
    "hft-padded-grouped": {"batching": "padded", "group_by_length": True},
}


def plan(args: Any, out: Path) -> Plan:
    from tests.fixtures import build_tiny_llama, lm_text_data

    if args.smoke:
        files = {k: str(v) for k, v in lm_text_data(out / "data", {"train": 96}).items()}
        config = {"files": files, "steps": 4, "batch_size": 8, "max_length": 64, "model_shape": None}
        repeats = 1
    else:
        text = shared_dir() / "data" / "tiny_shakespeare" / "input.txt"
        if not text.is_file():
            raise SystemExit(f"clm-packing needs {text} (set HFT_SHARED), or use --smoke")
        config = {
            "files": {"train": str(text)}, "steps": 30, "batch_size": 8, "max_length": 256,
            "model_shape": {"hidden": 512, "layers": 4, "heads": 8, "kv_heads": 4, "intermediate": 1376},
        }
        repeats = 3
    config.update(model=str(out / "model"), learning_rate=1e-3, seed=42, logging_steps=10)
    # The model is written once here so every variant starts from the same weights.
    build_tiny_llama(out / "model")
    if config["model_shape"]:
        _reshape(out / "model", config["model_shape"])
    return Plan(
        config=config,
        variants=["hft-packed", "hft-packed-random", "hft-padded", "hft-padded-grouped", "baseline", "loss-check"],
        metrics=METRICS,
        comparisons=[
            Comparison("tokens/s packed / padded (random batches)", "tokens_per_s", "hft-packed", "hft-padded", target=1.8),
            Comparison("tokens/s packed, random batches / padded (random batches)", "tokens_per_s", "hft-packed-random",
                       "hft-padded"),
            Comparison("tokens/s packed / padded (length-grouped)", "tokens_per_s", "hft-packed", "hft-padded-grouped"),
            Comparison("tokens/s packed / baseline (padded to max_length)", "tokens_per_s", "hft-packed", "baseline"),
            Comparison("tokens/s padded-grouped / padded", "tokens_per_s", "hft-padded-grouped", "hft-padded"),
        ],
        repeats=repeats,
    )


def _reshape(folder: Path, shape: dict[str, int]) -> None:
    """Replace the fixture's 2-layer, hidden-32 Llama by one of `shape`, same tokenizer and special tokens."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    base = LlamaConfig.from_pretrained(folder)
    config = LlamaConfig(
        vocab_size=base.vocab_size, hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=1024, bos_token_id=base.bos_token_id, eos_token_id=base.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)


# ----------------------------------------------------------------------------------------------------------------------
# Child side


def _recipe_dict(config: dict[str, Any], batching: str, group_by_length: bool, output_dir: Path) -> dict[str, Any]:
    return {
        "task": "causal-lm",
        "model": {"name": config["model"]},
        "dataset": {
            "files": config["files"], "columns": {"text": "text"}, "max_length": config["max_length"],
            "batching": batching, "text_sample_by": "paragraph",
            # A small carved validation split: the final evaluation is not what this measures.
            "max_samples": {"validation": 32},
        },
        "training": {
            "max_steps": config["steps"], "batch_size": config["batch_size"], "learning_rate": config["learning_rate"],
            "seed": config["seed"], "logging_steps": config["logging_steps"], "report_to": ["none"],
            "eval_strategy": "no", "save_strategy": "no", "group_by_length": group_by_length,
        },
        "output_dir": str(output_dir),
    }


def run_variant(variant: str, config: dict[str, Any], probe: Any) -> dict[str, Any]:
    if variant == "loss-check":
        return loss_check(config)
    probe.install()
    if variant == "baseline":
        return run_baseline(config)
    import yaml

    from hftoolkit.commands.finetune import finetune
    from hftoolkit.recipe.schema import load_recipe

    run_dir = Path(os.environ.get("BENCH_RUN_DIR", "bench-run"))
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(_recipe_dict(config, **VARIANTS[variant], output_dir=run_dir / "run"), sort_keys=False))
    finetune(load_recipe(path), command=f"bench clm-packing {path}", overwrite=True)
    results = json.loads((run_dir / "run" / "train_results.json").read_text())
    return {"eval_loss": results["validation"].get("eval_loss")}


def run_baseline(config: dict[str, Any]) -> dict[str, Any]:
    """Stock padded SFT: every example padded to max_length, labels -100 on padding, Trainer defaults + LoRA."""
    import os

    from datasets import load_dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, default_data_collator, set_seed

    from hftoolkit.recipe.schema import LoraSection

    set_seed(config["seed"])
    files = config["files"]
    kind = "text" if files["train"].endswith(".txt") else "json"
    extra = {"sample_by": "paragraph"} if kind == "text" else {}
    raw = load_dataset(kind, data_files={"train": files["train"]}, **extra)["train"]
    raw = raw.filter(lambda t: bool(t.strip()), input_columns=["text"])
    tokenizer = AutoTokenizer.from_pretrained(config["model"])
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    eos = tokenizer.eos_token

    def preprocess(batch):
        enc = tokenizer([t + eos for t in batch["text"]], padding="max_length", truncation=True, max_length=config["max_length"])
        enc["labels"] = [[i if m else -100 for i, m in zip(ids, mask)] for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
        return enc

    train = raw.map(preprocess, batched=True, remove_columns=raw.column_names)
    model = AutoModelForCausalLM.from_pretrained(config["model"])
    d = LoraSection()
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=d.r, lora_alpha=d.alpha, lora_dropout=d.dropout,
                                             target_modules=["q_proj", "v_proj"]))
    args = TrainingArguments(
        output_dir=str(Path(os.environ.get("BENCH_RUN_DIR", "bench-run")) / "baseline"), max_steps=config["steps"],
        per_device_train_batch_size=config["batch_size"], learning_rate=config["learning_rate"], seed=config["seed"],
        logging_steps=config["logging_steps"], report_to="none",
    )
    Trainer(model=model, args=args, train_dataset=train, data_collator=default_data_collator).train()
    return {}


def loss_check(config: dict[str, Any]) -> dict[str, Any]:
    """Per-example mean loss of the same examples, padded batch vs packed row, through hft's own collators."""
    import torch
    import transformers

    from hftoolkit.modeling import load_processor
    from hftoolkit.training.prepare import prepare_data
    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.tasks.registry import get_task

    task = get_task("causal-lm")
    recipes = {b: Recipe.model_validate(_recipe_dict(config, b, False, Path("unused"))) for b in ("padded", "packed")}
    tokenizer = load_processor(task, recipes["padded"].model)
    data = prepare_data(recipes["padded"], task, tokenizer)
    examples = [data.features["train"][i] for i in range(min(32, len(data.features["train"])))]
    model = transformers.AutoModelForCausalLM.from_pretrained(config["model"]).eval()

    def per_token_nll(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits.float()
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=-100, reduction="none")
        return nll, labels != -100

    padded = task.collator(tokenizer, recipes["padded"], on_gpu=False)(examples)
    nll, mask = per_token_nll(padded)
    loss_padded = (nll * mask).sum(1) / mask.sum(1)

    packed = task.collator(tokenizer, recipes["packed"], on_gpu=False)(examples)
    nll, mask = per_token_nll(packed)
    # Rows hold several examples each (in packing order): find each example's segment by its tokens.
    by_tokens: dict[tuple, torch.Tensor] = {}
    width = packed["input_ids"].shape[1]
    for r in range(packed["input_ids"].shape[0]):
        starts = (packed["position_ids"][r] == 0).nonzero().flatten().tolist() + [width]
        for a, b in zip(starts[:-1], starts[1:]):
            # Position t of nll predicts token t+1: the segment's predictions sit in [a, b - 1).
            scored = mask[r, a: b - 1]
            if scored.any():
                by_tokens[tuple(packed["input_ids"][r, a:b].tolist())] = (nll[r, a: b - 1] * scored).sum() / scored.sum()
    loss_packed = torch.stack([by_tokens[tuple(ex["input_ids"])] for ex in examples])
    diff = (loss_padded - loss_packed).abs()
    return {
        "examples": len(examples), "max_abs_loss_diff": float(diff.max()), "mean_loss_padded": float(loss_padded.mean()),
        "mean_loss_packed": float(loss_packed.mean()), "attn_implementation": model.config._attn_implementation,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Checks


def checks(runs: list, summary: dict, config: dict) -> list[dict[str, Any]]:
    found = [r for r in runs if r.variant == "loss-check"]
    if not found:
        return []
    diffs = [r.metrics.get("max_abs_loss_diff") for r in found]
    ok = all(r.ok for r in found) and all(d is not None and d <= LOSS_TOLERANCE for d in diffs)
    m = found[0].metrics
    return [{
        "check": "per-example loss packed == padded",
        "ok": ok,
        "detail": f"max |diff| {max((d for d in diffs if d is not None), default=float('nan')):.2e} over "
                  f"{m.get('examples')} examples (tolerance {LOSS_TOLERANCE:g}); mean loss {m.get('mean_loss_padded', 0):.4f} "
                  f"padded vs {m.get('mean_loss_packed', 0):.4f} packed; attention {m.get('attn_implementation')}",
    }]
