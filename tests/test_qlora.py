"""QLoRA (4- and 8-bit bases through bitsandbytes, on CPU) and PEFT's LoRA variants (DoRA, rsLoRA, PiSSA / OLoRA /
Gaussian init) on the tiny GPT-2 and Llama: each trains through the CLI, and the saved adapter reloads onto the base
to exactly the model that was trained (the end-of-training validation loss and greedy sample are reproduced by
`hft evaluate` and `hft predict`). Plus the refusals and `hft validate`'s memory plan."""

from __future__ import annotations

import json
import re

import pytest

from tests.fixtures import build_tiny_gpt2, build_tiny_llama, causal_lm_recipe, lm_chat_data, lm_text_data
from tests.cli_helpers import hft_cli

CHAT = {"columns": {"messages": "messages"}, "max_length": 64}
TRAINING = {
    "max_steps": 2, "batch_size": 8, "learning_rate": 5e-3, "logging_steps": 1, "report_to": ["none"], "seed": 7,
    "eval_strategy": "no", "save_strategy": "no",
}
PROMPT = "Say something."


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def chat_files(tmp_path_factory):
    return lm_chat_data(tmp_path_factory.mktemp("chat"), {"train": 16, "validation": 8})


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    return lm_text_data(tmp_path_factory.mktemp("text"), {"train": 16, "validation": 8})


def train_and_reload(tmp_path, base, files, *, chat: bool = True, **sections):
    """finetune, then evaluate (validation) and predict on the reloaded run: both must reproduce the trained model."""
    recipe = causal_lm_recipe(
        tmp_path / "r.yaml", base, files, tmp_path / "run", dataset=CHAT if chat else {"max_length": 64},
        training=TRAINING, generation={"prompts": [PROMPT], "max_new_tokens": 4}, **sections,
    )
    result = hft_cli("finetune", recipe)
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    trained = json.loads((run / "train_results.json").read_text())["validation"]["eval_loss"]
    from hftoolkit.commands.evaluate import evaluate_run
    from hftoolkit.commands.predict import predict_run

    reloaded = evaluate_run(run, split="validation")["metrics"]["loss"]
    assert reloaded == pytest.approx(trained, abs=1e-6, rel=0)
    sample = json.loads((run / "samples.jsonl").read_text().splitlines()[0])
    [predicted] = predict_run(run, [PROMPT], {"max_new_tokens": 4})
    assert predicted["generated_text"] == sample["generated_text"]
    return run, result.output


@pytest.mark.parametrize(("bits", "which"), [(4, "llama"), (8, "gpt2")])
def test_qlora_trains_on_a_quantized_base_and_reloads_exactly(bits, which, request, tmp_path):
    model = request.getfixturevalue(which)
    files = request.getfixturevalue("chat_files" if which == "llama" else "text_files")
    run, output = train_and_reload(tmp_path, model, files, chat=which == "llama", model={"name": str(model), "quantization": {"bits": bits}})
    assert f"linear layers loaded {bits}-bit through bitsandbytes" in output
    adapter = json.loads((run / "model/adapter_config.json").read_text())
    assert adapter["r"] == 4
    # hft push --merge: merged into the base dequantized, checked with the looser tolerance it states.
    from hftoolkit.publish.inspect import inspect_run
    from hftoolkit.publish.merge import merge_adapter
    from hftoolkit.quantization import MERGE_ATOL

    message = merge_adapter(inspect_run(run, merge=True), tmp_path / "merged")
    assert f"(the {bits}-bit base dequantized to float32) match the adapter's" in message
    assert f"allowed {MERGE_ATOL[bits]:g} in float32" in message
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())


@pytest.mark.parametrize(
    ("lora", "expect"),
    [
        ({"use_dora": True}, {"use_dora": True, "r": 4}),
        ({"use_rslora": True, "r": 8, "alpha": 4}, {"use_rslora": True, "r": 8}),
        ({"init": "gaussian"}, {"init_lora_weights": "gaussian", "r": 4}),
        # PiSSA / OLoRA rewrite the base: saved converted to plain LoRA on the original base, rank 2r.
        ({"init": "pissa"}, {"init_lora_weights": True, "r": 8}),
        ({"init": "olora"}, {"init_lora_weights": True, "r": 8}),
    ],
)
def test_lora_variants_pass_through_and_reload_exactly(lora, expect, llama, chat_files, tmp_path):
    run, _ = train_and_reload(tmp_path, llama, chat_files, lora={"r": 4, "alpha": 8, "dropout": 0.0, **lora})
    adapter = json.loads((run / "model/adapter_config.json").read_text())
    assert {k: adapter[k] for k in expect} == expect


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"model": {"quantization": {"bits": 3}}}, "model.quantization.bits: Input should be 4 or 8"),
        ({"model": {"quantization": {"bits": 4}}, "lora": {"enabled": False}}, "model.quantization needs LoRA"),
        ({"model": {"quantization": {"bits": 8, "type": "fp4"}}}, "4-bit settings"),
        ({"model": {"quantization": {"bits": 4}}, "lora": {"init": "pissa"}}, "lora.init pissa rewrites the base"),
        ({"lora": {"init": "loftq"}}, "lora.init: Input should be"),
    ],
)
def test_quantization_and_variant_settings_are_refused_in_one_line(sections, message, llama, chat_files, tmp_path):
    if "model" in sections:
        sections["model"] = {"name": str(llama), **sections["model"]}
    recipe = causal_lm_recipe(tmp_path / "r.yaml", llama, chat_files, tmp_path / "run", dataset=CHAT, **sections)
    result = hft_cli("validate", recipe)
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_quantization_of_a_classifier_is_refused(make_recipe):
    recipe = make_recipe(model={"quantization": {"bits": 4}})
    result = hft_cli("validate", recipe)
    assert result.exit_code == 2 and "model.quantization is for task causal-lm" in result.output, result.output


def test_validate_shows_the_memory_plan_with_and_without_quantization(llama, chat_files, tmp_path):
    recipe = causal_lm_recipe(
        tmp_path / "r.yaml", llama, chat_files, tmp_path / "run", dataset=CHAT,
        model={"name": str(llama), "quantization": {"bits": 4}},
    )
    result = hft_cli("validate", recipe)
    assert result.exit_code == 0, result.output
    [plan] = [line for line in result.output.splitlines() if line.startswith("memory plan")]
    sizes = {name: float(mb) for name, mb in re.findall(r"(not quantized|8-bit|4-bit) ([\d.,]+) MB", plan)}
    assert sizes["4-bit"] < sizes["8-bit"] < sizes["not quantized"], plan
    assert re.search(r"4-bit [\d.,]+ MB \(this recipe\)", plan), plan
