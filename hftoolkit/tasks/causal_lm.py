"""Causal language modelling (GPT family): continued pre-training on plain text and chat SFT, padded or packed.

Plain text (`columns.text`): each row is a document that ends in EOS, and every token is learned.
Chat (`columns.messages`, or `prompt`/`response` as one user/assistant exchange): rendered with the tokenizer's
chat template (tasks/_chat.py). Only assistant replies carry labels, including the end-of-turn token the template
closes a reply with, so the model learns to stop; everything else is -100.
Batching (`dataset.batching`, a key of this task): padded rows; packed rows (several examples per row, position_ids
restarting at 0 for each); or fixed-length blocks of concatenated text, as in transformers' run_clm example
(tasks/_packing.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import Field, field_validator

from hftoolkit import metrics as metric_lib
from hftoolkit.data import require_columns
from hftoolkit.errors import ModelError
from hftoolkit.recipe.base import Section, no_blank_entries
from hftoolkit.recipe_tuning import PREFERENCE_FIELDS, preference_problems
from hftoolkit.tasks._chat import ChatFormat, chat_mode, check_conversations
from hftoolkit.tasks._packing import IGNORE_INDEX, cut_blocks, pack_rows
from hftoolkit.tasks._preference import build_features, check_pairs
from hftoolkit.tasks._text import check_texts, ensure_pad_token, length_stats, tokenizer_identity, warn_image_paths
from hftoolkit.tasks.base import TaskBase

if TYPE_CHECKING:
    from datasets import Dataset

    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.run.records import DataReport

# Bump when the tokenization output changes, so cached features from older versions are not reused.
PREPROCESS_VERSION = 1
PREDICT_BATCH = 16
SAMPLES = "samples.jsonl"
TOKENIZE_BATCH = 1000  # rows per datasets.map batch (also the unit whose remainder `blocks` drops)
KEEP_BATCH = 10000  # rows per batch when dropping unusable rows (a boolean column: cheap)
LENGTH_SAMPLE = 10000  # training examples the token-length statistics are computed on
# More new tokens than the longest context of the model families hft fine-tunes (Llama 3: 128k) is a typo.
MAX_NEW_TOKENS = 131_072

# The export's README (`hft export`): scoring with the ONNX graph, and where to generate instead.
ONNX_USAGE = '''```python
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

tokenizer = Tokenizer.from_file("tokenizer.json")
session = ort.InferenceSession("{model_file}", providers=["CPUExecutionProvider"])
ids = tokenizer.encode({text!r}).ids
logits = session.run(["logits"], {{"input_ids": np.array([ids]), "attention_mask": np.ones((1, len(ids)), np.int64)}})[0]
print(tokenizer.decode([int(logits[0, -1].argmax())]))  # the most likely next token
```

This graph scores a whole sequence per call (no KV cache), which is right for scoring and ranking but slow for
generation. To generate text, publish the merged weights (`hft push RUN --merge`) and serve them with vLLM, TGI or
transformers, or run `hft serve RUN_DIR`.'''


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class GenerationSection(Section):
    """Text generation with a causal LM: samples written at the end of training, and `hft predict` defaults."""

    prompts: list[str] = Field(
        default_factory=list,
        description="Generated with the fine-tuned model at the end of training and saved to samples.jsonl in the run "
        "directory. With chat data (messages or prompt/response columns) each prompt is a user message formatted with "
        "the chat template; with plain text it is the start of a text to continue.",
    )
    max_new_tokens: int = Field(64, ge=1, le=MAX_NEW_TOKENS, description="Most tokens generated per prompt.")
    do_sample: bool = Field(False, description="Sample (with temperature and top_p) instead of greedy decoding.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (do_sample: true only).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest token set with this probability mass (do_sample: true only).")

    @field_validator("prompts")
    @classmethod
    def _prompts_have_text(cls, prompts: list[str]) -> list[str]:
        # Generation from nothing fails at the end of training, after all the work; refuse it up front.
        return no_blank_entries(prompts, "prompt", "every prompt needs text to continue or answer") or []


RECIPE_FIELDS: dict[str, tuple[Any, Any]] = {
    "dataset.batching": (Literal["padded", "packed", "blocks"], Field(
        "padded",
        description="Causal LM only. padded: one example per row, padded to the longest in the batch. packed: the "
        "batch's examples packed into as few rows of at most max_length tokens as fit, positions restarting at 0 for "
        "each so no example attends to another. blocks: plain text concatenated (EOS between rows) and cut into rows of exactly max_length "
        "tokens, attention crossing row boundaries (continued pre-training, like transformers' run_clm example).",
    )),
    "dataset.end_of_turn_token": (str | None, Field(
        None,
        description="Causal LM chat data: the token the chat template ends an assistant turn with, when it is not the "
        "tokenizer's EOS token (e.g. <|im_end|> on a base model whose EOS is <|endoftext|>). It becomes the EOS token of "
        "the saved tokenizer and model config so generation stops at the end of a reply.",
    )),
    "generation": (GenerationSection, Field(default_factory=GenerationSection, description="Causal LM only.")),
}


def _tokenize_text(tokenizer: Any, col: str, max_length: int, blocks: bool) -> Callable:
    """Plain text -> rows ending in EOS, every token learned (cut at max_length unless they become blocks)."""
    eos = tokenizer.eos_token_id

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(batch[col])["input_ids"]
        ids, truncated, keep = [], [], []
        for text, row in zip(batch[col], enc):
            row = row if row and row[-1] == eos else row + [eos]
            truncated.append(not blocks and len(row) > max_length)
            ids.append(row if blocks else row[:max_length])
            keep.append(bool(text.strip()))
        return {"input_ids": ids, "labels": ids, "length": [len(r) for r in ids], "truncated": truncated, "keep": keep}

    return tokenize


def _tokenize_chat(chat: ChatFormat, columns: Any, max_length: int) -> Callable:
    """Conversations -> rendered rows whose labels are the assistant replies' tokens (-100 elsewhere)."""
    tokenizer = chat.tokenizer

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        if columns.messages is not None:
            conversations = batch[columns.messages]
        else:
            conversations = [
                [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
                for p, r in zip(batch[columns.prompt], batch[columns.response])
            ]
        rendered = [chat.reply_spans([{"role": m["role"], "content": m["content"]} for m in conv]) for conv in conversations]
        # The template writes BOS and other specials itself; adding them again would double them.
        enc = tokenizer(
            [text for text, _ in rendered], add_special_tokens=False, truncation=True, max_length=max_length,
            return_offsets_mapping=True,
        )
        labels, keep = [], []
        for (_, spans), ids, offsets in zip(rendered, enc["input_ids"], enc["offset_mapping"]):
            row = [
                t if any(start < end_ and end > start_ for start_, end_ in spans) else IGNORE_INDEX
                for t, (start, end) in zip(ids, offsets)
            ]
            labels.append(row)
            keep.append(any(t != IGNORE_INDEX for t in row))
        truncated = [len(e.overflowing) > 0 for e in enc.encodings] if enc.encodings else [False] * len(labels)
        return {
            "input_ids": enc["input_ids"], "labels": labels, "length": [len(r) for r in enc["input_ids"]],
            "truncated": truncated, "keep": keep,
        }

    return tokenize


class CausalLM(TaskBase):
    name = "causal-lm"
    pipeline_tag = "text-generation"
    card_title = "Text Generation"
    auto_model = "AutoModelForCausalLM"
    generates_text = True
    predict_example = "Once upon a time"
    peft_task_type = "CAUSAL_LM"
    default_metrics = ("perplexity", "next_token_accuracy")
    column_roles = {
        "text": "plain text, one document per row",
        "messages": "chat messages, a list of {role, content} per row (SFT)",
        "prompt": "the prompt of a prompt/response pair (SFT) or of a preference pair (DPO / ORPO; optional)",
        "response": "the response of a prompt/response pair (SFT)",
        "chosen": "the preferred completion of a preference pair (DPO / ORPO): text or assistant turns",
        "rejected": "the dispreferred completion of a preference pair (DPO / ORPO), the same kind as chosen",
    }
    recipe_fields = {**RECIPE_FIELDS, **PREFERENCE_FIELDS}
    serve_kind = "generate"
    onnx_servable = False  # the graph has no KV cache: `hft serve` generates from the run directory
    training_defaults = {"lora": {"training.learning_rate": 1e-3, "training.epochs": 1.0}}  # bench/RESULTS.md: measured

    def check_recipe(self, recipe: Recipe) -> list[str]:
        c, ds = recipe.dataset.columns, recipe.dataset
        problems = preference_problems(recipe)
        if recipe.training.objective != "sft" or c.chosen or c.rejected:
            return problems  # preference pairs: the SFT column rules below do not apply
        kinds = [k for k, on in (("text", c.text), ("messages", c.messages), ("prompt/response", c.prompt or c.response)) if on]
        if len(kinds) != 1:
            given = f" (given: {', '.join(kinds)})" if kinds else ""
            problems.append(
                "dataset.columns needs exactly one kind of causal-lm data: text (plain text), messages (chat) or "
                f"prompt and response{given}"
            )
        if (c.prompt is None) != (c.response is None):
            problems.append("dataset.columns needs both prompt and response (a prompt/response pair per row)")
        if ds.batching == "blocks" and c.text is None:
            problems.append("dataset.batching blocks cuts plain text (columns.text) into blocks; chat data uses padded or packed")
        if ds.end_of_turn_token is not None and c.text is not None:
            problems.append("dataset.end_of_turn_token is for chat data (messages or prompt/response), not plain text")
        return problems

    def load_processor(self, ref: str, kwargs: dict[str, Any]) -> Any:
        from transformers import AutoTokenizer

        tokenizer = ensure_pad_token(
            AutoTokenizer.from_pretrained(ref, **kwargs), ref, "padding is masked out of the labels, so EOS is still learned"
        )
        # Training batches pad on the right: GPT-2's absolute positions would shift under left padding. Generation
        # pads on the left per call (predict), so the saved tokenizer stays as trained.
        tokenizer.padding_side = "right"
        return tokenizer

    # ---------------------------------------------------------------------------------------------------------------
    # Checking the raw splits

    def prepare(self, splits: dict[str, Dataset], recipe: Recipe, report: DataReport) -> None:
        if recipe.training.objective != "sft":  # DPO / ORPO pairs (TRL tokenizes them)
            return check_pairs(splits, recipe, report)
        c = recipe.dataset.columns
        wanted = {"text": c.text, "messages": c.messages, "prompt": c.prompt, "response": c.response}
        for role, split in splits.items():
            require_columns(split, role, wanted)
            report.columns[role] = list(split.column_names)
            # Checked here, before a validation split is carved, so row numbers are rows of the source split.
            if c.messages is not None:
                check_conversations(split, role, c.messages)
        # Empty documents are counted and dropped in preprocess (WikiText and .txt files read by line have blank
        # rows by design); an empty prompt or response is refused unless dataset.allow_empty_text.
        check_texts(splits, [c.text], report, allow_empty=True, refuse=False)
        check_texts(splits, [c.prompt, c.response], report, allow_empty=recipe.dataset.allow_empty_text)
        return None

    # ---------------------------------------------------------------------------------------------------------------
    # Features

    def preprocess(self, splits: dict[str, Dataset], recipe: Recipe, tokenizer: Any, report: DataReport) -> dict[str, Dataset]:
        if recipe.training.objective != "sft":
            return build_features(splits, recipe, tokenizer, report)
        ds, c = recipe.dataset, recipe.dataset.columns
        chat = None
        if c.text is None:
            chat = ChatFormat(tokenizer, recipe.model.name)
            chat.adopt_end_of_turn(ds.end_of_turn_token)  # may change the EOS token: before the identity is taken
        max_length, blocks = ds.max_length, ds.batching == "blocks"
        if tokenizer.eos_token_id is None:
            raise ModelError(f"the tokenizer of {recipe.model.name!r} has no EOS token to end documents with")
        tokenize = _tokenize_text(tokenizer, c.text, max_length, blocks) if chat is None else _tokenize_chat(chat, c, max_length)
        ident = "|".join([
            f"clm{PREPROCESS_VERSION}", tokenizer_identity(tokenizer), _sha(tokenizer.chat_template or "") if chat else "",
            str(tokenizer.eos_token), "text" if chat is None else "chat", str(max_length), str(blocks), str(c.text),
            str(c.messages), str(c.prompt), str(c.response),
        ])
        drop_reason = "empty text" if chat is None else f"no assistant tokens within max_length {max_length}"
        features = {
            role: self._tokenized(split, role, tokenize, _sha(f"{ident}|{split._fingerprint}"), drop_reason, not blocks,
                                  ds.num_proc, report)
            for role, split in splits.items()
        }
        if len(features["train"]):
            report.token_lengths = length_stats(features["train"]["length"][:LENGTH_SAMPLE])
        if blocks:
            features = {role: cut_blocks(f, role, max_length, report) for role, f in features.items()}
        return features

    @staticmethod
    def _tokenized(split: Dataset, role: str, tokenize: Callable, fingerprint: str, drop_reason: str, count_truncated: bool,
                   num_proc: int | None, report: DataReport) -> Dataset:
        """One split tokenized (cached under `fingerprint`), its unusable rows dropped and counted in the report."""
        mapped = split.map(
            tokenize,
            batched=True,
            batch_size=TOKENIZE_BATCH,
            num_proc=num_proc,
            remove_columns=split.column_names,
            new_fingerprint=fingerprint,
            desc=f"Tokenizing {role}",
        )
        if count_truncated:
            truncated = mapped.data.column("truncated").to_pylist() if mapped._indices is None else mapped["truncated"]
            report.truncated_share[role] = sum(truncated) / max(len(truncated), 1)
        kept = mapped.filter(
            lambda keep: keep,
            input_columns=["keep"],
            batched=True,
            batch_size=KEEP_BATCH,
            new_fingerprint=_sha(f"{fingerprint}|keep"),
            desc=f"Dropping unusable rows of {role}",
        )
        if len(kept) < len(mapped):
            report.dropped[f"{drop_reason}, {role}"] = len(mapped) - len(kept)
        return kept.remove_columns(["truncated", "keep"])

    def collator(self, tokenizer: Any, recipe: Recipe, on_gpu: bool) -> Callable:
        if recipe.dataset.batching == "packed":
            # load_processor guarantees a pad token (EOS when the tokenizer has none).
            pad_id, capacity = tokenizer.pad_token_id, recipe.dataset.max_length

            def collate_packed(examples: list[dict]) -> dict:
                return pack_rows(examples, capacity, pad_id, multiple_of=8 if on_gpu else 1)

            return collate_packed

        from transformers import DataCollatorForSeq2Seq

        # Pads input_ids with the pad token and labels with -100 (DataCollatorWithPadding leaves labels alone).
        # Multiples of 8 let tensor cores work on GPU and only waste compute on CPU.
        pad = DataCollatorForSeq2Seq(
            tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, pad_to_multiple_of=8 if on_gpu else None
        )

        def collate_padded(examples: list[dict]) -> dict:
            # `length` feeds the length-grouped sampler; the model must not see it.
            return pad([{k: v for k, v in ex.items() if k != "length"} for ex in examples])

        return collate_padded

    # ---------------------------------------------------------------------------------------------------------------
    # Model

    def head_modules(self, model: Any) -> list[str]:
        # The LM head is tied to (or mirrors) the embeddings: training it fully would save a vocabulary-sized copy.
        return []

    # ---------------------------------------------------------------------------------------------------------------
    # Metrics and evaluation

    def preprocess_logits_for_metrics(self, logits: Any, labels: Any) -> Any:
        """Per token: the most likely next token and the loss of the true one, aligned with `labels` (position t
        holds what the model predicted for token t from the tokens before it; position 0 has no prediction).
        Reduces [batch, length, vocabulary] logits to two [batch, length] arrays before they are gathered."""
        import torch.nn.functional as F

        if isinstance(logits, tuple):
            logits = logits[0]
        shifted = logits[:, :-1].float()
        targets = labels[:, 1:]
        nll = F.cross_entropy(shifted.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
        predicted = shifted.argmax(-1)
        return F.pad(predicted, (1, 0), value=IGNORE_INDEX), F.pad(nll, (1, 0), value=0.0)

    def metrics(self, recipe: Recipe, labels: list[str] | None) -> Callable:
        import numpy as np

        names = recipe.evaluation.metrics or list(self.default_metrics)

        def compute(eval_pred: Any) -> dict[str, float]:
            predicted, nll = eval_pred.predictions
            refs = np.asarray(eval_pred.label_ids)
            predicted, nll = np.asarray(predicted), np.asarray(nll)
            # Scored: tokens with a label that the model predicted (not position 0, not batch-concatenation padding).
            scored = (refs != IGNORE_INDEX) & (predicted != IGNORE_INDEX)
            refs = refs[scored]
            results: dict[str, float] = {}
            for name in names:
                # Perplexity reads the per-token losses; token-level metrics (next_token_accuracy, or e.g. accuracy)
                # read the predicted token ids.
                preds = nll[scored] if name == "perplexity" else predicted[scored]
                results.update(metric_lib.compute([name], preds, refs))
            return results

        return compute

    # ---------------------------------------------------------------------------------------------------------------
    # Generation

    def check_predict_inputs(self, inputs: list[str]) -> None:
        warn_image_paths(inputs)

    def predict_options(self, recipe: Recipe) -> dict[str, Any]:
        g = recipe.generation
        return {
            "max_new_tokens": g.max_new_tokens, "do_sample": g.do_sample, "temperature": g.temperature, "top_p": g.top_p,
            # A run trained on chat data answers user messages; one trained on plain text continues the input.
            # Preference pairs may be either: None lets predict use the chat template when the tokenizer has one.
            "chat": recipe.dataset.columns.text is None if recipe.training.objective == "sft" else None,
        }

    def predict(self, model: Any, tokenizer: Any, inputs: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
        """Prompt -> generated text (the new tokens only). With options["chat"], each prompt is a user message
        formatted with the chat template; otherwise it is the start of a text to continue."""
        import torch
        from transformers import GenerationConfig

        chat = chat_mode(options, tokenizer)
        do_sample = bool(options.get("do_sample", False))
        # A complete config: the base checkpoint's own generation defaults (e.g. a repetition penalty) do not leak in.
        config = GenerationConfig(
            max_new_tokens=int(options.get("max_new_tokens", 64)),
            do_sample=do_sample,
            temperature=float(options.get("temperature", 1.0)) if do_sample else None,
            top_p=float(options.get("top_p", 1.0)) if do_sample else None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        if chat:
            formatter = ChatFormat(tokenizer, str(getattr(tokenizer, "name_or_path", "")))
            texts = [formatter.render([{"role": "user", "content": p}], generation_prompt=True) for p in inputs]
        else:
            texts = list(inputs)
        model.eval()
        out = []
        for start in range(0, len(texts), PREDICT_BATCH):
            chunk = texts[start: start + PREDICT_BATCH]
            # Left padding: every prompt of the batch ends where generation starts.
            enc = tokenizer(chunk, padding=True, padding_side="left", add_special_tokens=not chat, return_tensors="pt")
            enc = {k: v.to(model.device) for k, v in enc.items()}
            with torch.no_grad():
                generated = model.generate(**enc, generation_config=config)
            new_tokens = generated[:, enc["input_ids"].shape[1]:]
            texts_out = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            out += [{"input": p, "generated_text": t} for p, t in zip(inputs[start: start + PREDICT_BATCH], texts_out)]
        return out

    def write_train_artifacts(self, model: Any, tokenizer: Any, recipe: Recipe, out_dir: Path) -> list[str]:
        """samples.jsonl: the recipe's generation prompts answered by the fine-tuned model (seeded when sampling)."""
        import json

        import transformers

        from hftoolkit.run.records import write_atomic

        prompts = recipe.generation.prompts
        if not prompts:
            return []
        transformers.set_seed(recipe.training.seed)
        options = self.predict_options(recipe)
        results = self.predict(model, tokenizer, prompts, options)
        settings = {k: options[k] for k in ("max_new_tokens", "do_sample", "temperature", "top_p")}
        settings["chat"] = chat_mode(options, tokenizer)
        lines = [
            json.dumps({"prompt": r["input"], "generated_text": r["generated_text"], **settings}, ensure_ascii=False)
            for r in results
        ]
        write_atomic(Path(out_dir) / SAMPLES, "\n".join(lines) + "\n")
        return [SAMPLES]

    # ---------------------------------------------------------------------------------------------------------------
    # Deploy

    def export_recipe(self, recipe: Recipe) -> Recipe:
        # Packed rows carry position_ids instead of an attention mask: export one sequence per row.
        dataset = recipe.dataset.model_copy(update={"batching": "padded"})
        return recipe.model_copy(update={"dataset": dataset})

    def onnx_usage(self, model_file: str, tokenizer: Any, config: Any) -> str:
        return ONNX_USAGE.format(model_file=model_file, text="The history of")


TASK = CausalLM()
