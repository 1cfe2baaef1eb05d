"""Causal LM task: SFT label masks, packing without cross-contamination, blocks, bad inputs, metrics, and
finetune -> evaluate -> predict through the CLI on tiny random GPT-2 and Llama models (plus a slow real-data run)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import yaml

from hftoolkit.errors import DataError, ModelError, RecipeError
from hftoolkit.recipe.schema import load_recipe
from tests.conftest import REPO, run_hft, shared_path
from tests.fixtures import (
    build_tiny_gpt2,
    build_tiny_llama,
    causal_lm_recipe,
    lm_chat_data,
    lm_text_data,
    write_jsonl,
)

CHAT = {"columns": {"messages": "messages"}}
PAIRS = {"columns": {"prompt": "prompt", "response": "response"}}


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    return lm_text_data(tmp_path_factory.mktemp("lm_text"))


@pytest.fixture(scope="module")
def chat_files(tmp_path_factory):
    return lm_chat_data(tmp_path_factory.mktemp("lm_chat"))


@pytest.fixture
def recipe_file(tmp_path):
    """recipe_file(model, files, **sections) -> a tiny causal-LM recipe path writing into tmp_path/run."""

    def make(model, files, **sections):
        return causal_lm_recipe(tmp_path / "recipe.yaml", model, files, tmp_path / "run", **sections)

    return make


def prepared(path, *overrides):
    from hftoolkit.modeling import load_processor
    from hftoolkit.training.prepare import prepare_data
    from hftoolkit.tasks.registry import get_task

    recipe = load_recipe(path, list(overrides))
    task = get_task("causal-lm")
    tokenizer = load_processor(task, recipe.model)
    return recipe, task, tokenizer, prepare_data(recipe, task, tokenizer)


def scored_tokens(labels) -> int:
    """Tokens a causal LM is scored on: labelled tokens after the first (the first is never predicted)."""
    return sum(1 for t in labels[1:] if t != -100)


# ----------------------------------------------------------------------------------------------------------------------
# Labels and batching


def test_sft_labels_are_the_assistant_replies_with_their_end_of_turn(llama, chat_files, recipe_file):
    _, _, tok, data = prepared(recipe_file(llama, chat_files, dataset=CHAT))
    rows = [json.loads(line) for line in chat_files["train"].read_text().splitlines()]
    train = data.features["train"]
    assert len(train) == len(rows)  # nothing dropped: carve-out-free splits keep row order
    for row, ex in zip(rows, train):
        learned = tok.decode([t for t in ex["labels"] if t != -100])
        # Every reply and the end-of-turn token after it (so the model learns to stop); no user or system text.
        assert learned == "".join(m["content"] + "<|im_end|>\n" for m in row["messages"] if m["role"] == "assistant")
        assert ex["input_ids"][0] == tok.convert_tokens_to_ids("<|im_start|>")  # the template's start, not doubled
        assert ex["input_ids"][1] != ex["input_ids"][0]

    _, _, tok, data = prepared(recipe_file(llama, chat_files, dataset=PAIRS))
    ex = data.features["train"][0]
    assert tok.decode([t for t in ex["labels"] if t != -100]) == rows[0]["response"] + "<|im_end|>\n"
    assert "user\n" + rows[0]["prompt"] in tok.decode(ex["input_ids"])


def test_num_proc_tokenizes_in_worker_processes_to_the_same_features(llama, chat_files, recipe_file):
    _, _, _, one = prepared(recipe_file(llama, chat_files, dataset=CHAT))
    _, _, _, two = prepared(recipe_file(llama, chat_files, dataset=CHAT), "dataset.num_proc=2")
    train1, train2 = one.features["train"], two.features["train"]
    assert len(train2.cache_files) == 2  # one Arrow shard per worker: the map did run in 2 processes
    assert train1.to_dict() == train2.to_dict()


@pytest.mark.parametrize("kind", ["gpt2-text", "llama-chat"])
def test_packed_loss_equals_token_weighted_mean_of_single_example_losses(kind, gpt2, llama, text_files, chat_files, recipe_file, tmp_path):
    """No cross-contamination: in a packed row each example sees only itself (float32, within 1e-5)."""
    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments

    model_dir, files, sections = (gpt2, text_files, {}) if kind == "gpt2-text" else (llama, chat_files, {"dataset": CHAT})
    recipe, task, tok, data = prepared(recipe_file(model_dir, files, **sections))
    packed_recipe = load_recipe(recipe_file(model_dir, files, **sections), ["dataset.batching=packed"])
    examples = [data.features["train"][i] for i in range(6)]
    assert len({len(ex["input_ids"]) for ex in examples}) > 3, "variable lengths make the test meaningful"

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    # Position-based packing detection only runs without a KV cache; the Trainer sets use_cache from its arguments.
    assert TrainingArguments(output_dir=str(tmp_path)).use_cache is False
    model.config.use_cache = False

    pad = task.collator(tok, recipe, on_gpu=False)
    pack = task.collator(tok, packed_recipe, on_gpu=False)
    with torch.no_grad():
        singles = [(model(**pad([ex])).loss.item(), scored_tokens(ex["labels"])) for ex in examples]
        expected = sum(loss * n for loss, n in singles) / sum(n for _, n in singles)
        batch = pack(examples)
        assert "attention_mask" not in batch
        rows, width = batch["input_ids"].shape
        lengths = sorted(len(ex["input_ids"]) for ex in examples)
        assert width <= packed_recipe.dataset.max_length and rows < len(examples), "several examples share a row"
        # Each row: examples with positions restarting at 0, then at most one pad segment that learns nothing.
        segments = []
        for r in range(rows):
            pos, lab = batch["position_ids"][r].tolist(), batch["labels"][r].tolist()
            starts = [i for i, p in enumerate(pos) if p == 0] + [width]
            for a, b in zip(starts[:-1], starts[1:]):
                assert pos[a:b] == list(range(b - a))
                segments.append((b - a, all(x == -100 for x in lab[a:b])))
        assert sorted(n for n, pad in segments if not pad) == lengths
        assert sum(n for n, _ in segments) == rows * width
        packed = model(**batch).loss.item()
        padded = model(**pad(examples)).loss.item()
        # The same row read as one long sequence (positions not restarting) lets examples attend to each other.
        contaminated = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss.item()
    assert abs(packed - expected) < 1e-5
    assert abs(padded - expected) < 1e-5
    # A random tiny model is nearly uniform, so the leak is small, but far above the tolerance used above.
    assert abs(contaminated - expected) > 1e-4


def test_blocks_cut_concatenated_text_into_equal_rows(gpt2, text_files, recipe_file):
    _, _, tok, data = prepared(recipe_file(gpt2, text_files, dataset={"batching": "blocks", "max_length": 16}))
    train = data.features["train"]
    assert {len(ids) for ids in train["input_ids"]} == {16}
    assert train["labels"] == train["input_ids"]
    # Documents are EOS-separated inside the blocks, and nearly all the text survives (remainders are dropped).
    flat = [t for ids in train["input_ids"] for t in ids]
    n_docs = len(text_files["train"].read_text().splitlines())
    assert flat.count(tok.eos_token_id) >= n_docs - 1
    assert any(n.startswith("blocks (train): ") for n in data.report.notes)


def test_plain_text_file_becomes_paragraph_rows_with_a_carved_validation_split(gpt2, recipe_file, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"SPEAKER {i}:\nLine one of speech {i}.\nLine two." for i in range(40)) + "\n")
    _, _, tok, data = prepared(recipe_file(gpt2, {"train": corpus}))
    assert data.report.split_sizes == {"train": 36, "validation": 4}
    for ids in data.features["train"]["input_ids"]:
        text = tok.decode(ids)  # a whole paragraph, its line breaks kept, ended by EOS
        assert text.startswith("SPEAKER ") and ":\nLine one of speech " in text and text.endswith("<|endoftext|>")
    assert any("validation carved from train" in n for n in data.report.notes)


# ----------------------------------------------------------------------------------------------------------------------
# Bad inputs: one clear message each


def expect(exc, match: str, path, *overrides):
    from hftoolkit.commands.validate import validate

    with pytest.raises(exc) as info:
        validate(load_recipe(path, list(overrides)))
    assert match in str(info.value), str(info.value)


def test_missing_text_column(gpt2, text_files, recipe_file):
    expect(DataError, "dataset.columns.text: column 'body' not found in split 'train'; available columns: text",
           recipe_file(gpt2, text_files, dataset={"columns": {"text": "body"}}))


def test_missing_messages_column(llama, text_files, recipe_file):
    expect(DataError, "dataset.columns.messages: column 'messages' not found in split 'train'; available columns: text",
           recipe_file(llama, text_files, dataset=CHAT))


def test_no_data_column_at_all(gpt2, text_files, recipe_file):
    with pytest.raises(RecipeError, match="dataset.columns needs exactly one kind of causal-lm data"):
        load_recipe(recipe_file(gpt2, text_files, dataset={"columns": {}}))


def test_messages_without_an_assistant_turn(llama, recipe_file, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 3
    rows[1] = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows)}
    expect(DataError, "split 'train' row 1: column 'messages': the conversation has no assistant turn",
           recipe_file(llama, files, dataset=CHAT))


def test_unknown_chat_role(llama, recipe_file, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 3
    rows[2] = {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]}
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows)}
    expect(DataError, "split 'train' row 2: column 'messages': unknown chat role 'bot' (known roles: system, user, assistant)",
           recipe_file(llama, files, dataset=CHAT))


def test_chat_data_needs_a_chat_template(gpt2, chat_files, recipe_file):
    expect(ModelError, "its tokenizer has no chat template", recipe_file(gpt2, chat_files, dataset=CHAT))


def test_end_of_turn_must_be_eos_or_named_in_the_recipe(llama, chat_files, recipe_file, tmp_path):
    from transformers import AutoTokenizer

    # A base-model tokenizer: same template, but EOS is <|endoftext|>, so replies would never stop.
    base = tmp_path / "base_tok"
    tok = AutoTokenizer.from_pretrained(llama)
    tok.eos_token = "<|endoftext|>"
    tok.save_pretrained(base)
    for f in ("config.json", "model.safetensors"):
        # Copies, not symlinks: a model file linked from outside its folder is refused (tests/test_hardening_symlinks.py).
        shutil.copyfile(llama / f, base / f)
    path = recipe_file(base, chat_files, dataset=CHAT)
    expect(ModelError, "ends an assistant reply with '<|im_end|>' but the tokenizer's EOS token is '<|endoftext|>'", path)
    expect(ModelError, "dataset.end_of_turn_token is '<|endoftext|>' but the chat template ends an assistant reply with "
           "'<|im_end|>'", path, "dataset.end_of_turn_token=<|endoftext|>")
    _, _, tok, data = prepared(path, "dataset.end_of_turn_token=<|im_end|>")
    assert tok.eos_token == "<|im_end|>"  # what the saved tokenizer and config will stop generation at


def test_causal_lm_settings_are_refused_elsewhere_and_blocks_need_plain_text(llama, chat_files, recipe_file, make_recipe):
    with pytest.raises(RecipeError, match="dataset.batching packed is for task causal-lm"):
        load_recipe(make_recipe(dataset={"batching": "packed"}))
    with pytest.raises(RecipeError, match="generation is for task causal-lm"):
        load_recipe(make_recipe(generation={"prompts": ["hi"]}))
    with pytest.raises(RecipeError, match="dataset.batching blocks cuts plain text"):
        load_recipe(recipe_file(llama, chat_files, dataset={**CHAT, "batching": "blocks"}))


# ----------------------------------------------------------------------------------------------------------------------
# Metrics


def test_shipped_perplexity_and_next_token_accuracy_modules():
    from hftoolkit import metrics

    out = metrics.compute(["perplexity"], [1.0, 2.0, 9.0], [5, 6, -100])
    assert out == {"perplexity": pytest.approx(math.exp(1.5))}
    assert metrics.compute(["next_token_accuracy"], [5, 7, 1, 1], [5, 6, -100, 1]) == {"next_token_accuracy": pytest.approx(2 / 3)}


def test_eval_perplexity_is_exp_of_the_token_mean_loss(gpt2, text_files, recipe_file):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, EvalPrediction

    recipe, task, tok, data = prepared(recipe_file(gpt2, text_files))
    batch = task.collator(tok, recipe, on_gpu=False)([data.features["validation"][i] for i in range(5)])
    model = AutoModelForCausalLM.from_pretrained(gpt2, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(**batch)
    predicted, nll = task.preprocess_logits_for_metrics(out.logits, batch["labels"])
    scores = task.metrics(recipe, None)(EvalPrediction(predictions=(predicted.numpy(), nll.numpy()), label_ids=batch["labels"].numpy()))
    assert scores["perplexity"] == pytest.approx(math.exp(out.loss.item()), rel=1e-5)
    expected_acc = (out.logits[:, :-1].argmax(-1) == batch["labels"][:, 1:])[batch["labels"][:, 1:] != -100].float().mean()
    assert scores["next_token_accuracy"] == pytest.approx(float(expected_acc))
    assert np.all(predicted.numpy()[:, 0] == -100)


# ----------------------------------------------------------------------------------------------------------------------
# End to end through the CLI


def test_gpt2_plain_text_packed_finetune_evaluate_predict(gpt2, text_files, tmp_path):
    recipe = causal_lm_recipe(
        tmp_path / "r.yaml", gpt2, text_files, tmp_path / "run",
        dataset={"batching": "packed"}, generation={"prompts": ["The cat", "A big red"], "max_new_tokens": 6},
    )
    proc = run_hft("finetune", recipe)
    run = tmp_path / "run"
    # GPT-2 has no pad token: EOS pads, the user is told, and the saved config says so.
    assert "no pad token: padding with its EOS token '<|endoftext|>'" in proc.stderr
    config = json.loads((run / "model/config.json").read_text())
    assert config["pad_token_id"] == config["eos_token_id"] is not None
    adapter = json.loads((run / "model/adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM" and set(adapter["target_modules"]) == {"c_attn"}
    assert not adapter["modules_to_save"]
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [s["prompt"] for s in samples] == ["The cat", "A big red"]
    assert all(isinstance(s["generated_text"], str) and s["chat"] is False for s in samples)
    validation = json.loads((run / "train_results.json").read_text())["validation"]
    assert validation["eval_perplexity"] > 1 and 0 <= validation["eval_next_token_accuracy"] <= 1

    proc = run_hft("evaluate", run)
    assert "test split, 24 examples" in proc.stdout
    results = json.loads((run / "eval_results.json").read_text())
    assert set(results["metrics"]) == {"loss", "perplexity", "next_token_accuracy"}
    assert results["artifacts"] == []

    proc = run_hft("predict", run, "The cat", "--max-new-tokens", "6", "--json")
    [line] = proc.stdout.splitlines()
    # Greedy, same settings: the reloaded adapter reproduces the sample generated at the end of training.
    assert json.loads(line) == {"input": "The cat", "generated_text": samples[0]["generated_text"]}


def test_llama_chat_sft_padded_finetune_evaluate_predict_and_cached_tokenization(llama, chat_files, tmp_path):
    recipe = causal_lm_recipe(
        tmp_path / "r.yaml", llama, chat_files, tmp_path / "run",
        dataset=CHAT, generation={"prompts": ["Say something."], "max_new_tokens": 5},
    )
    run_hft("finetune", recipe)
    run = tmp_path / "run"
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["prompt"] == "Say something." and samples[0]["chat"] is True
    adapter = json.loads((run / "model/adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    assert yaml.safe_load((run / "recipe.resolved.yaml").read_text())["dataset"]["batching"] == "padded"

    # The CLI path of evaluate and predict is covered above; here in-process, to keep the file quick.
    from hftoolkit.commands.evaluate import evaluate_run
    from hftoolkit.commands.predict import predict_run

    results = evaluate_run(run, split="validation")
    assert results["num_examples"] == 16 and results["metrics"]["perplexity"] > 1
    [result] = predict_run(run, ["Say something."], {})
    assert result == {"input": "Say something.", "generated_text": samples[0]["generated_text"]}

    proc = run_hft("finetune", recipe, "--overwrite")
    assert "Tokenizing train" not in proc.stderr, proc.stderr[-2000:]


def test_shipped_recipes_load_and_say_how_to_run_them():
    for name in ("gpt_clm", "gpt_sft"):
        path = REPO / "recipes" / f"{name}.yaml"
        first = path.read_text().splitlines()[0]
        assert first.startswith(f"# Run:  hft finetune recipes/{name}.yaml"), first
        assert load_recipe(path).task == "causal-lm"


# ----------------------------------------------------------------------------------------------------------------------
# Real data and a real model (slow: ~2-3 minutes on 2 CPU cores)


@pytest.mark.slow
@pytest.mark.shared
def test_lora_on_real_smollm2_gguf_lowers_tiny_shakespeare_validation_loss(tmp_path):
    model_dir = shared_path("models", "smollm2-135m-instruct-gguf")
    corpus = shared_path("data", "tiny_shakespeare", "input.txt")
    recipe = causal_lm_recipe(
        tmp_path / "r.yaml", model_dir, {"train": corpus}, tmp_path / "run",
        model={"name": str(model_dir), "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
        dataset={
            "files": {"train": str(corpus)}, "columns": {"text": "text"}, "batching": "blocks", "max_length": 32,
            "validation_size": 0.01, "max_samples": {"validation": 8},
        },
        lora={"r": 8, "alpha": 16, "dropout": 0.0},
        training={
            "max_steps": 6, "batch_size": 4, "learning_rate": 3e-3, "logging_steps": 2, "report_to": ["none"],
            "eval_strategy": "steps", "eval_steps": 1000, "eval_on_start": True, "save_strategy": "no", "eval_batch_size": 8,
        },
    )
    run_hft("finetune", recipe)
    run = tmp_path / "run"
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    before = next(e["eval_loss"] for e in evals if "eval_loss" in e and e["step"] == 0)
    after = json.loads((run / "train_results.json").read_text())["validation"]["eval_loss"]
    assert after < before - 0.05, (before, after)

    # The adapter reloads onto the GGUF base (dequantized again) and scores the same.
    run_hft("evaluate", run, "--split", "validation")
    scored = json.loads((run / "eval_results.json").read_text())["metrics"]["loss"]
    assert scored == pytest.approx(after, abs=1e-4)
