"""Causal language modelling (GPT family): continued pre-training on plain text and chat SFT, padded or packed.

Plain text (`columns.text`): each row is a document that ends in EOS, and every token is learned.
Chat (`columns.messages`, or `prompt`/`response` as one user/assistant exchange): rendered with the tokenizer's
chat template. Only assistant replies carry labels, including the end-of-turn token the template closes a reply
with, so the model learns to stop; everything else is -100.
Batching (`dataset.batching`): padded rows; packed rows (the batch concatenated into one row with position_ids
restarting at 0 for each example, transformers' DataCollatorWithFlattening); or fixed-length blocks of
concatenated text, as in transformers' run_clm example.
"""

from __future__ import annotations

import hashlib
import logging
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from hftoolkit import metrics as metric_lib
from hftoolkit.data import column_values, require_columns
from hftoolkit.errors import DataError, ModelError
from hftoolkit.tasks._text import check_texts, ensure_pad_token, warn_image_paths
from hftoolkit.tasks.base import DataReport
from hftoolkit.tasks.text_classification import tokenizer_identity

if TYPE_CHECKING:
    from datasets import Dataset

    from hftoolkit.recipe import Recipe

log = logging.getLogger("hftoolkit")

# Bump when the tokenization output changes, so cached features from older versions are not reused.
PREPROCESS_VERSION = 1
IGNORE_INDEX = -100  # label of tokens that are not learned (prompt, padding); the loss and the metrics skip them
CHAT_ROLES = ("system", "user", "assistant")
PREDICT_BATCH = 16
SAMPLES = "samples.jsonl"
_REPLY_MARK = "hft-reply-marker"  # stand-in reply used to find what the chat template writes after a reply


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _length_stats(lengths: list[int]) -> dict[str, float]:
    s = sorted(lengths)
    p95 = s[min(len(s) - 1, int(len(s) * 0.95))]
    return {"sample": len(s), "mean": sum(s) / len(s), "p50": s[len(s) // 2], "p95": p95, "max": s[-1]}


def pack_rows(examples: list[dict], capacity: int, pad_id: int, multiple_of: int = 1) -> dict:
    """Pack a batch's examples into as few rows of at most `capacity` tokens as first-fit decreasing finds.

    No attention_mask: position_ids restart at 0 for each example, and transformers derives the example boundaries
    from them (masking_utils.find_packed_sequence_indices): FlashAttention varlen on GPU, a block-diagonal causal
    mask for SDPA/eager, so no example attends to another. That detection only happens without a KV cache; the
    Trainer turns use_cache off (TrainingArguments.use_cache=False), and tests/test_causal_lm.py checks it.
    Written here because transformers' DataCollatorWithFlattening puts the whole batch in ONE row: SDPA and eager
    attention then cost (batch x length)^2, which bench/RESULTS.md measured at 0.6x the per-token speed of padded
    rows on CPU; rows bounded by max_length keep attention as cheap as padding while dropping almost all of it.
    The first label of each example is -100: it would be predicted from the previous example's last token. A row
    shorter than the widest is filled with one pad segment (its own positions from 0, labels -100), which the
    boundary detection isolates like any other example.
    """
    import torch

    capacity = max([capacity] + [len(ex["input_ids"]) for ex in examples])
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"])):
        n = len(examples[i]["input_ids"])
        fit = next((r for r, left in enumerate(room) if n <= left), None)
        if fit is None:
            rows.append([i])
            room.append(capacity - n)
        else:
            rows[fit].append(i)
            room[fit] -= n
    width = max(capacity - left for left in room)
    width = -(-width // multiple_of) * multiple_of
    ids, labels, positions = [], [], []
    for row in rows:
        r_ids, r_labels, r_pos = [], [], []
        for i in row:
            ex = examples[i]
            n = len(ex["input_ids"])
            r_ids += list(ex["input_ids"])
            r_labels += [IGNORE_INDEX] + list(ex["labels"][1:])
            r_pos += range(n)
        fill = width - len(r_ids)
        ids.append(r_ids + [pad_id] * fill)
        labels.append(r_labels + [IGNORE_INDEX] * fill)
        positions.append(r_pos + list(range(fill)))
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "position_ids": torch.tensor(positions, dtype=torch.long),
    }


def _chat_mode(options: dict[str, Any], tokenizer: Any) -> bool:
    """Whether prompts are user messages: as the options say, or (None) when the tokenizer has a chat template."""
    chat = options.get("chat")
    return bool(getattr(tokenizer, "chat_template", None)) if chat is None else bool(chat)


class ChatFormat:
    """Renders conversations with the tokenizer's chat template and finds the characters of each assistant reply.

    Transformers can return an assistant mask itself (`return_assistant_tokens_mask`), but only for templates that
    mark replies with `{% generation %}`, which few do. Rendering the conversation up to each reply instead works
    with any template that renders incrementally (each prefix of a conversation renders to a prefix of the text),
    and that is checked for every conversation rather than assumed.
    """

    def __init__(self, tokenizer: Any, model_name: str):
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError(
                f"model {model_name!r}: its tokenizer has no chat template, which chat data (columns.messages or "
                "prompt/response) is formatted with; use an instruct/chat model, or train on plain text (columns.text)"
            )
        self.tokenizer = tokenizer

    def render(self, messages: list[dict], generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def end_of_turn(self) -> tuple[str, int]:
        """The token the template writes right after an assistant reply (what the model must learn to emit)."""
        text = self.render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _REPLY_MARK}])
        after = text[text.rindex(_REPLY_MARK) + len(_REPLY_MARK):].lstrip()
        ids = self.tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
        if not ids:
            raise ModelError(
                "the chat template writes nothing after an assistant reply, so the model could not learn where a reply "
                "ends; use a chat template that closes each turn with an end-of-turn token"
            )
        return self.tokenizer.convert_ids_to_tokens(ids[0]), ids[0]

    def reply_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the [start, end) characters of each assistant reply with its end-of-turn."""
        text = self.render(messages)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:i], generation_prompt=True)
            through = self.render(messages[: i + 1])
            if not (text.startswith(through) and through.startswith(before)):
                raise ModelError(
                    "the chat template does not render conversations incrementally (a conversation's beginning renders "
                    "differently on its own), so assistant replies cannot be located for the loss mask"
                )
            spans.append((len(before), len(through)))
        return text, spans


class CausalLM:
    name = "causal-lm"
    pipeline_tag = "text-generation"
    auto_model = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    default_metrics = ("perplexity", "next_token_accuracy")
    processor_kind = "tokenizer"

    def load_processor(self, ref: str, kwargs: dict[str, Any]) -> Any:
        from transformers import AutoTokenizer

        tokenizer = ensure_pad_token(
            AutoTokenizer.from_pretrained(ref, **kwargs), ref, "padding is masked out of the labels, so EOS is still learned"
        )
        # Training batches pad on the right: GPT-2's absolute positions would shift under left padding. Generation
        # pads on the left per call (predict), so the saved tokenizer stays as trained.
        tokenizer.padding_side = "right"
        return tokenizer

    def stratify_column(self, recipe: Recipe) -> str | None:
        return None

    # ---------------------------------------------------------------------------------------------------------------
    # Checking the raw splits

    def prepare(self, splits: dict[str, Dataset], recipe: Recipe, report: DataReport) -> None:
        if recipe.training.objective != "sft":  # DPO / ORPO pairs (TRL tokenizes them)
            from hftoolkit.tasks._preference import check_pairs

            return check_pairs(splits, recipe, report)
        c = recipe.dataset.columns
        wanted = {"text": c.text, "messages": c.messages, "prompt": c.prompt, "response": c.response}
        for role, split in splits.items():
            require_columns(split, role, wanted)
            report.columns[role] = list(split.column_names)
            # Checked here, before a validation split is carved, so row numbers are rows of the source split.
            if c.messages is not None:
                self._check_conversations(split, role, c.messages)
        # Empty documents are counted and dropped in preprocess (WikiText and .txt files read by line have blank
        # rows by design); an empty prompt or response is refused unless dataset.allow_empty_text.
        check_texts(splits, [c.text], report, allow_empty=True, refuse=False)
        check_texts(splits, [c.prompt, c.response], report, allow_empty=recipe.dataset.allow_empty_text)
        return None

    @staticmethod
    def _check_conversations(split: Dataset, role: str, col: str) -> None:
        for i, conversation in enumerate(column_values(split, col)):
            where = f"split {role!r} row {i}: column {col!r}"
            if not isinstance(conversation, list) or not conversation:
                raise DataError(f"{where} is not a list of chat messages ({{role, content}} objects)")
            for m in conversation:
                if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                    raise DataError(f"{where}: message {m!r} is not a {{role, content}} object with text content")
                if m["role"] not in CHAT_ROLES:
                    raise DataError(f"{where}: unknown chat role {m['role']!r} (known roles: {', '.join(CHAT_ROLES)})")
            roles = [m["role"] for m in conversation]
            if "assistant" not in roles:
                raise DataError(
                    f"{where}: the conversation has no assistant turn; SFT learns from assistant replies, so every "
                    "conversation needs at least one"
                )
            if roles[0] == "assistant":
                raise DataError(f"{where}: the conversation starts with an assistant turn; put a user (or system) turn first")

    # ---------------------------------------------------------------------------------------------------------------
    # Features

    def check_end_of_turn(self, chat: ChatFormat, recipe: Recipe) -> None:
        """The template's end-of-turn must be what generation stops at: the EOS token, or the recipe's override
        (which then becomes the EOS token of the tokenizer, and through the Trainer of the saved config)."""
        tokenizer = chat.tokenizer
        token, _ = chat.end_of_turn()
        wanted = recipe.dataset.end_of_turn_token
        if wanted is not None:
            if wanted != token:
                raise ModelError(
                    f"dataset.end_of_turn_token is {wanted!r} but the chat template ends an assistant reply with {token!r}"
                )
            if tokenizer.eos_token != token:
                log.info(
                    "end of turn: %r replaces %r as the EOS token, so generation stops after a reply", token, tokenizer.eos_token
                )
                tokenizer.eos_token = token
        elif token != tokenizer.eos_token:
            raise ModelError(
                f"the chat template ends an assistant reply with {token!r} but the tokenizer's EOS token is "
                f"{tokenizer.eos_token!r}, so a trained model would not stop generating at the end of a reply; set "
                f"dataset.end_of_turn_token: {token!r} to make it the EOS token of the trained model"
            )

    def preprocess(self, splits: dict[str, Dataset], recipe: Recipe, tokenizer: Any, report: DataReport) -> dict[str, Dataset]:
        if recipe.training.objective != "sft":
            from hftoolkit.tasks._preference import build_features

            def end_of_turn(tok: Any) -> None:
                self.check_end_of_turn(ChatFormat(tok, recipe.model.name), recipe)

            return build_features(splits, recipe, tokenizer, report, end_of_turn)
        ds = recipe.dataset
        c = ds.columns
        chat = None
        if c.text is None:
            chat = ChatFormat(tokenizer, recipe.model.name)
            self.check_end_of_turn(chat, recipe)  # may change the EOS token: before the tokenizer's identity is taken
        max_length = ds.max_length
        blocks = ds.batching == "blocks"
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ModelError(f"the tokenizer of {recipe.model.name!r} has no EOS token to end documents with")

        def tokenize_text(batch: dict[str, list]) -> dict[str, list]:
            enc = tokenizer(batch[c.text])["input_ids"]
            ids, truncated, keep = [], [], []
            for text, row in zip(batch[c.text], enc):
                row = row if row and row[-1] == eos else row + [eos]
                truncated.append(not blocks and len(row) > max_length)
                ids.append(row if blocks else row[:max_length])
                keep.append(bool(text.strip()))
            return {"input_ids": ids, "labels": ids, "length": [len(r) for r in ids], "truncated": truncated, "keep": keep}

        def tokenize_chat(batch: dict[str, list]) -> dict[str, list]:
            if c.messages is not None:
                conversations = batch[c.messages]
            else:
                conversations = [
                    [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
                    for p, r in zip(batch[c.prompt], batch[c.response])
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

        kind = "text" if chat is None else "chat"
        ident = "|".join([
            f"clm{PREPROCESS_VERSION}", tokenizer_identity(tokenizer), _sha(tokenizer.chat_template or "") if chat else "",
            str(tokenizer.eos_token), kind, str(max_length), str(blocks), str(c.text), str(c.messages), str(c.prompt),
            str(c.response),
        ])
        drop_reason = "empty text" if chat is None else f"no assistant tokens within max_length {max_length}"
        features: dict[str, Dataset] = {}
        for role, split in splits.items():
            fingerprint = _sha(f"{ident}|{split._fingerprint}")
            mapped = split.map(
                tokenize_text if chat is None else tokenize_chat,
                batched=True,
                batch_size=1000,
                num_proc=recipe.dataset.num_proc,
                remove_columns=split.column_names,
                new_fingerprint=fingerprint,
                desc=f"Tokenizing {role}",
            )
            if not blocks:
                truncated = mapped.data.column("truncated").to_pylist() if mapped._indices is None else mapped["truncated"]
                report.truncated_share[role] = sum(truncated) / max(len(truncated), 1)
            kept = mapped.filter(
                lambda keep: keep,
                input_columns=["keep"],
                batched=True,
                batch_size=10000,
                new_fingerprint=_sha(f"{fingerprint}|keep"),
                desc=f"Dropping unusable rows of {role}",
            )
            if len(kept) < len(mapped):
                report.dropped[f"{drop_reason}, {role}"] = len(mapped) - len(kept)
            features[role] = kept.remove_columns(["truncated", "keep"])
        if len(features["train"]):
            report.token_lengths = _length_stats(features["train"]["length"][:10000])
        if blocks:
            features = {role: self._blocks(f, role, max_length, report) for role, f in features.items()}
        return features

    @staticmethod
    def _blocks(features: Dataset, role: str, size: int, report: DataReport) -> Dataset:
        """Concatenate documents (EOS-separated) and cut them into rows of exactly `size` tokens, as run_clm does:
        the remainder of each 1,000-document batch is dropped."""
        total = sum(features["length"])

        def group(batch: dict[str, list]) -> dict[str, list]:
            ids = list(chain.from_iterable(batch["input_ids"]))
            rows = [ids[i: i + size] for i in range(0, len(ids) - size + 1, size)]
            return {"input_ids": rows, "labels": rows, "length": [size] * len(rows)}

        grouped = features.map(
            group,
            batched=True,
            batch_size=1000,
            remove_columns=features.column_names,
            new_fingerprint=_sha(f"{features._fingerprint}|blocks{size}"),
            desc=f"Cutting {role} into blocks",
        )
        if len(grouped) == 0:
            raise DataError(
                f"split {role!r} has {total} tokens, fewer than one block of dataset.max_length {size}; lower max_length "
                "or give the split more text"
            )
        report.notes.append(f"blocks ({role}): {len(grouped)} blocks of {size} tokens from {total} tokens")
        return grouped

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

    def model_kwargs(self, labels: list[str] | None) -> dict[str, Any]:
        return {}

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

    def write_eval_artifacts(self, out_dir: Any, predictions: Any, references: Any, labels: list[str] | None) -> list[str]:
        return []

    # ---------------------------------------------------------------------------------------------------------------
    # Generation

    def check_predict_inputs(self, inputs: list[str]) -> None:
        warn_image_paths(inputs)

    def predict_options(self, recipe: Recipe) -> dict[str, Any]:
        g = recipe.generation
        return {
            "max_new_tokens": g.max_new_tokens, "do_sample": g.do_sample, "temperature": g.temperature, "top_p": g.top_p,
            # A run trained on chat data answers user messages; one trained on plain text continues the input.
            # Preference pairs may be either: chat when the tokenizer has a chat template (None: predict decides).
            "chat": recipe.dataset.columns.text is None if recipe.training.objective == "sft" else None,
        }

    def predict(self, model: Any, tokenizer: Any, inputs: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
        """Prompt -> generated text (the new tokens only). With options["chat"], each prompt is a user message
        formatted with the chat template; otherwise it is the start of a text to continue."""
        import torch
        from transformers import GenerationConfig

        chat = _chat_mode(options, tokenizer)
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

        from hftoolkit.rundir import write_atomic

        prompts = recipe.generation.prompts
        if not prompts:
            return []
        transformers.set_seed(recipe.training.seed)
        options = self.predict_options(recipe)
        results = self.predict(model, tokenizer, prompts, options)
        settings = {k: options[k] for k in ("max_new_tokens", "do_sample", "temperature", "top_p")}
        settings["chat"] = _chat_mode(options, tokenizer)
        lines = [
            json.dumps({"prompt": r["input"], "generated_text": r["generated_text"], **settings}, ensure_ascii=False)
            for r in results
        ]
        write_atomic(Path(out_dir) / SAMPLES, "\n".join(lines) + "\n")
        return [SAMPLES]


TASK = CausalLM()
