"""Preference tuning (training.objective dpo / orpo through TRL) on the tiny Llama, through the CLI in process:
finetune -> evaluate -> predict with TRL's metrics in metrics.jsonl, train_results.json and eval_results.json; the
reference model of LoRA and full fine-tuning runs; bad pairs named by split and row (or counted and dropped); long
pairs dropped and truncation reported; recipe refusals. Resume and push of preference runs are in test_resume.py and
test_push.py; a slow real-data DPO run on HH-RLHF pairs with the SmolLM2 GGUF is at the end.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import shared_path
from tests.fixtures import build_tiny_llama, causal_lm_recipe, hh_decline_pairs, lm_preference_data, write_jsonl
from tests.cli_helpers import hft_cli, refused

PAIRS = {"columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}, "max_length": 64}
TRAINING = {
    "max_steps": 4, "batch_size": 8, "learning_rate": 5e-3, "logging_steps": 1, "report_to": ["none"], "seed": 7,
    "eval_strategy": "steps", "eval_steps": 2, "save_strategy": "no",
}
# What TRL logs for every objective, and what eval_results.json keeps of it.
TRL_METRICS = {"rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"}
PROMPT = "Say something."
# Real-data run (bench/RESULTS.md, preference-defaults, has the sweep these come from).
REAL_TRAIN, REAL_HELD_OUT, REAL_EPOCHS, REAL_LR = 32, 64, 1, 1e-3
REAL_MIN_ACCURACY, REAL_MIN_MARGIN = 0.75, 0.1  # measured 0.844 and 0.344 (see the real-data test)


def ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def chat_pairs(tmp_path_factory):
    return lm_preference_data(tmp_path_factory.mktemp("chat_pairs"))


@pytest.fixture(scope="module")
def text_pairs(tmp_path_factory):
    return lm_preference_data(tmp_path_factory.mktemp("text_pairs"), {"train": 32, "validation": 8, "test": 8}, chat=False)


@pytest.fixture
def recipe(tmp_path, llama, chat_pairs):
    """recipe(files=chat_pairs, **sections) -> a tiny DPO recipe writing into tmp_path/run."""

    def make(files=None, name: str = "r.yaml", **sections):
        sections = {"dataset": PAIRS, "training": {**TRAINING, "objective": "dpo"}, **sections}
        return causal_lm_recipe(tmp_path / name, llama, files or chat_pairs, tmp_path / "run", **sections)

    return make


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------------------------
# End to end


def test_dpo_with_lora_finetune_evaluate_predict(recipe, tmp_path):
    path = recipe(generation={"prompts": [PROMPT], "max_new_tokens": 4})
    plan = ok(hft_cli("validate", path))
    assert "objective: dpo through TRL DPOTrainer (beta 0.1, loss sigmoid" in plan
    assert "reference model: the base with the adapter disabled (no second copy)" in plan
    ok(hft_cli("finetune", path))
    run = tmp_path / "run"
    logged = metrics(run)
    steps = [m for m in logged if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4] and all(TRL_METRICS <= set(m) for m in steps)
    evals = [m for m in logged if "eval_loss" in m]
    # eval_steps 2, then the final validation that train_results.json records (as for SFT)
    assert [m["step"] for m in evals] == [2, 4, 4] and all({f"eval_{k}" for k in TRL_METRICS} <= set(m) for m in evals)
    validation = json.loads((run / "train_results.json").read_text())["validation"]
    assert validation["eval_rewards/accuracies"] == evals[-1]["eval_rewards/accuracies"]
    # The adapter learned the preference ("Yes." over "No."): chosen now more likely than rejected, relative to the base.
    assert validation["eval_rewards/margins"] > 0 and validation["eval_rewards/accuracies"] > 0.5
    resolved = json.loads(json.dumps(__import__("yaml").safe_load((run / "recipe.resolved.yaml").read_text())))
    assert resolved["training"]["beta"] == 0.1 and resolved["training"]["loss_type"] == "sigmoid"
    assert not (run / "model" / "ref").exists()  # only the trained adapter is saved

    # hft evaluate on the validation split reloads the adapter and reproduces TRL's end-of-training numbers.
    out = ok(hft_cli("evaluate", run, "--split", "validation"))
    assert "validation split, 16 examples" in out
    scored = json.loads((run / "eval_results.json").read_text())["metrics"]
    assert set(scored) == {"loss"} | TRL_METRICS
    for name, value in scored.items():
        assert value == pytest.approx(validation[f"eval_{name}"], abs=1e-5), name

    # hft predict generates as for SFT (chat prompts), reproducing the sample written at the end of training.
    sample = json.loads((run / "samples.jsonl").read_text().splitlines()[0])
    assert sample["chat"] is True
    predicted = hft_cli("predict", run, PROMPT, "--max-new-tokens", "4", "--json")
    ok(predicted)
    assert json.loads(predicted.stdout) == {"input": PROMPT, "generated_text": sample["generated_text"]}


def test_orpo_on_plain_text_pairs_finetune_evaluate_predict_and_card(recipe, llama, text_pairs, tmp_path):
    path = recipe(
        text_pairs, training={**TRAINING, "objective": "orpo", "max_steps": 2, "eval_steps": 2},
        model={"name": str(llama), "license": "apache-2.0"},
    )
    plan = ok(hft_cli("validate", path))
    assert "objective: orpo through TRL ORPOTrainer (trl.experimental) (beta 0.1" in plan
    assert "reference model" not in plan  # ORPO needs none
    ok(hft_cli("finetune", path))
    run = tmp_path / "run"
    steps = [m for m in metrics(run) if "loss" in m]
    assert len(steps) == 2 and all(TRL_METRICS | {"nll_loss", "log_odds_ratio"} <= set(m) for m in steps)
    assert "preference pairs (train): plain text" in json.loads((run / "data_report.json").read_text())["notes"]
    ok(hft_cli("evaluate", run))
    scored = json.loads((run / "eval_results.json").read_text())
    assert scored["split"] == "test" and scored["num_examples"] == 8
    assert TRL_METRICS | {"nll_loss", "log_odds_ratio", "log_odds_chosen"} <= set(scored["metrics"])
    # Plain-text pairs, and a tokenizer with a chat template: hft predict answers prompts as chat messages.
    predicted = hft_cli("predict", run, "Q: where is the river?\nA:", "--max-new-tokens", "3", "--json")
    assert set(json.loads(ok(predicted) and predicted.stdout)) == {"input", "generated_text"}
    # The card (merged: the tiny base is a local folder) says how the model was trained, with TRL's metrics.
    from huggingface_hub import ModelCard

    dry_run = hft_cli("push", run, "--repo-id", "org/llama-orpo", "--merge", "--dry-run")
    card = ok(dry_run) and dry_run.stdout.split("\n--- ", 1)[0]
    assert "| objective | orpo (TRL ORPOTrainer) |" in card and "| beta | 0.1 |" in card
    assert "Trained with TRL's `ORPOTrainer`." in card
    assert TRL_METRICS <= {r.metric_type for r in ModelCard(card).data.eval_results}


def test_dpo_full_fine_tuning_uses_an_explicit_frozen_reference(recipe, tmp_path):
    path = recipe(lora={"enabled": False}, training={**TRAINING, "objective": "dpo", "max_steps": 1, "eval_strategy": "no"})
    plan = ok(hft_cli("validate", path))
    assert "reference model: a frozen copy of the model, passed as ref_model (in the memory plan)" in plan
    assert "and the frozen reference copy DPO needs" in plan
    ok(hft_cli("finetune", path))
    run = tmp_path / "run"
    assert (run / "model" / "model.safetensors").is_file()
    # Reloaded, the trained model scores against the base loaded again as the reference: margins are not all zero.
    ok(hft_cli("evaluate", run, "--split", "validation"))
    scored = json.loads((run / "eval_results.json").read_text())["metrics"]
    assert scored["rewards/margins"] != 0 and TRL_METRICS <= set(scored)


# ----------------------------------------------------------------------------------------------------------------------
# Bad and long pairs


def _pair(prompt="Hi", chosen="Yes.", rejected="No."):
    as_turns = lambda role, text: [{"role": role, "content": text}] if isinstance(text, str) else text  # noqa: E731
    return {"prompt": as_turns("user", prompt), "chosen": as_turns("assistant", chosen), "rejected": as_turns("assistant", rejected)}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (_pair(chosen=""), "chosen is empty (its assistant turns have no text)"),
        (_pair(rejected="Yes."), "chosen and rejected are identical"),
        ({**_pair(), "rejected": [{"role": "user", "content": "Hi"}]}, "rejected does not end with an assistant turn"),
        (
            {**_pair(), "chosen": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Yes."}]},
            "the prompt differs between the prompt column and the turns chosen repeats",
        ),
        ({**_pair(), "chosen": [{"role": "robot", "content": "x"}]}, "chosen: unknown chat role 'robot'"),
    ],
)
def test_bad_pairs_are_named_by_split_and_row_or_counted_and_dropped(bad, message, recipe, tmp_path):
    rows = [_pair(chosen=f"Yes {i}.", rejected=f"No {i}.") for i in range(12)]
    rows[7] = bad
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows), "validation": write_jsonl(tmp_path / "val.jsonl", rows[:3])}
    refused(hft_cli("validate", recipe(files)), f"split 'train' row 7: {message}", "dataset.skip_bad_pairs: true")
    path = recipe(files, name="skip.yaml", dataset={**PAIRS, "skip_bad_pairs": True})
    out = ok(hft_cli("validate", path))
    assert "split train: 11 rows" in out and "dropped: 1 rows (" in out


def test_implicit_prompts_must_match_between_the_sides(recipe, tmp_path):
    convo = lambda user, reply: [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]  # noqa: E731
    rows = [{"chosen": convo(f"Q{i}", "Yes."), "rejected": convo(f"Q{i}", "No.")} for i in range(10)]
    rows[4]["rejected"] = convo("another question", "No.")
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows)}
    dataset = {"columns": {"chosen": "chosen", "rejected": "rejected"}, "max_length": 64}
    training = {**TRAINING, "objective": "dpo", "eval_strategy": "no"}
    refused(hft_cli("validate", recipe(files, dataset=dataset, training=training)), "split 'train' row 4: the prompt differs between chosen and rejected")
    del rows[4]
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows)}
    out = ok(hft_cli("validate", recipe(files, dataset=dataset, training=training)))
    assert "preference pairs (train): conversational" in out and "dropped" not in out


def test_missing_column_and_plain_text_without_a_prompt_column(recipe, text_pairs):
    refused(hft_cli("validate", recipe(text_pairs, dataset={**PAIRS, "columns": {**PAIRS["columns"], "chosen": "better"}})),
            "dataset.columns.chosen: column 'better' not found in split 'train'; available columns: prompt, chosen, rejected")
    no_prompt = {**PAIRS, "columns": {"chosen": "chosen", "rejected": "rejected"}}
    refused(hft_cli("validate", recipe(text_pairs, dataset=no_prompt)), "plain text, so dataset.columns.prompt must name the prompt column")


def test_long_pairs_are_dropped_or_truncated_and_reported(recipe, tmp_path):
    long_prompt = " ".join(["the river runs under the hill"] * 12)  # alone longer than max_length 64
    rows = [_pair(chosen="Yes. " + "red " * (40 if i % 2 else 1), rejected=f"No {i}.") for i in range(12)]
    rows[3] = _pair(prompt=long_prompt)
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows), "validation": write_jsonl(tmp_path / "val.jsonl", rows[:4])}
    out = ok(hft_cli("validate", recipe(files)))
    assert "dropped: 1 rows (prompt leaves no room for a completion within max_length 64, train)" in out
    assert "truncated (train): 45.5% of examples cut at max_length" in out  # 5 of the 11 kept pairs
    only_long = {"train": write_jsonl(tmp_path / "long.jsonl", [_pair(prompt=long_prompt, rejected=f"No {i}.") for i in range(3)])}
    refused(hft_cli("validate", recipe(only_long, training={**TRAINING, "objective": "dpo", "eval_strategy": "no"})),
            "split 'train' is empty after preprocessing")


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"training": {"beta": 0.2}}, "training.beta is a setting of objective dpo or orpo, not sft"),
        ({"training": {"objective": "orpo", "loss_type": "ipo"}}, "training.loss_type is a setting of objective dpo, not orpo"),
        ({"training": {"objective": "dpo", "beta": 0}}, "training.beta: Input should be greater than 0"),
        ({"training": {"objective": "kto"}}, "training.objective: Input should be 'sft', 'dpo' or 'orpo'"),
        ({"training": {"objective": "dpo"}, "evaluation": {"metrics": ["accuracy"]}}, "evaluation.metrics is not used with training.objective dpo"),
        ({"dataset": {"columns": {"text": "prompt"}}, "training": {"objective": "dpo"}}, "needs dataset.columns.chosen and rejected"),
        ({"dataset": {"columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}}}, "dataset.columns.chosen and rejected are for training.objective dpo or orpo"),
    ],
)
def test_objective_settings_are_validated_per_objective(sections, message, llama, chat_pairs, tmp_path):
    path = causal_lm_recipe(tmp_path / "r.yaml", llama, chat_pairs, tmp_path / "run", **sections)
    refused(hft_cli("validate", path), message)


def test_preference_objectives_need_a_causal_lm(make_recipe):
    refused(hft_cli("validate", make_recipe(training={"objective": "dpo"})), "training.objective dpo is for task causal-lm")


def test_shipped_preference_and_qlora_recipes_load_and_say_how_to_run_them():
    from hftoolkit.recipe.schema import load_recipe
    from tests.fixtures import REPO

    for name, objective, bits in (("gpt_dpo", "dpo", None), ("gpt_qlora_sft", "sft", 4)):
        path = REPO / "recipes" / f"{name}.yaml"
        assert path.read_text().splitlines()[0].startswith(f"# Run:  hft finetune recipes/{name}.yaml")
        recipe = load_recipe(path)
        assert recipe.training.objective == objective
        assert (recipe.model.quantization.bits if recipe.model.quantization else None) == bits


# ----------------------------------------------------------------------------------------------------------------------
# Real data and a real model (slow)


@pytest.mark.slow
@pytest.mark.shared
def test_lora_dpo_on_real_hh_rlhf_pairs_raises_held_out_reward_accuracy_and_margin(tmp_path):
    """SmolLM2-135M-Instruct (GGUF) + LoRA, DPO on real HH-RLHF harmless pairs whose chosen reply declines ("I'm
    sorry", "I can't" ...) and whose rejected one does not: one preference that a short run can learn and that
    generalises, scored by TRL on 64 held-out pairs of the same kind. Untrained, the adapter is a no-op (policy ==
    reference): reward accuracy 0 and margin 0 by construction, so that evaluation is not spent. Pairs with the
    shortest prompts; completions cut at max_length 64 (TRL keeps the prompt), which the data report counts.
    Measured on these pairs (bench preference-defaults `dpo-lr1e-03-b0.1-e1`, the same 32 + 64 pairs and weights):
    held-out reward accuracy 0 -> 0.844, margin 0 -> 0.344; asserted with room for run-to-run noise."""
    model_dir = shared_path("models", "smollm2-135m-instruct-gguf")
    pairs = hh_decline_pairs(shared_path("data", "hh_rlhf_harmless", "test.jsonl"), REAL_TRAIN + REAL_HELD_OUT)
    files = {
        "train": write_jsonl(tmp_path / "train.jsonl", pairs[:REAL_TRAIN]),
        "validation": write_jsonl(tmp_path / "held_out.jsonl", pairs[REAL_TRAIN:]),
    }
    path = causal_lm_recipe(
        tmp_path / "r.yaml", model_dir, files, tmp_path / "run",
        model={"name": str(model_dir), "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
        dataset={**PAIRS, "max_length": 64},
        lora={"r": 16, "alpha": 32, "dropout": 0.0},
        training={
            "objective": "dpo", "epochs": REAL_EPOCHS, "batch_size": 8, "learning_rate": REAL_LR, "logging_steps": 2,
            "report_to": ["none"], "eval_strategy": "no", "save_strategy": "no", "eval_batch_size": 32,
        },
    )
    ok(hft_cli("finetune", path))
    run = tmp_path / "run"
    after = json.loads((run / "train_results.json").read_text())["validation"]
    assert json.loads((run / "data_report.json").read_text())["split_sizes"]["validation"] == REAL_HELD_OUT
    accuracy, margin = after["eval_rewards/accuracies"], after["eval_rewards/margins"]
    print(f"held-out DPO on {REAL_HELD_OUT} HH-RLHF pairs: reward accuracy 0 -> {accuracy:.3f}, margin 0 -> {margin:.4f}")
    assert accuracy >= REAL_MIN_ACCURACY and margin >= REAL_MIN_MARGIN, after
