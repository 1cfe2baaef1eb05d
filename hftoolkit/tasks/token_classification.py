"""Token classification (NER, POS, chunking): words and tags per row, subword alignment, seqeval metrics, entity spans.

Columns: `dataset.columns.tokens` (a list of words per row) and `dataset.columns.tags` (a list of tags, ClassLabel ids
or strings). Tags follow `evaluation.scheme` (IOB2 by default): the data is checked against it, entities are scored in
seqeval's strict mode, and `hft predict` reads spans with the same seqeval rules, so what predict shows is what was
scored. The head, label-to-config mapping and LoRA head saving are shared with the classifiers (_classification.py).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import Field

from hftoolkit import metrics as metric_lib
from hftoolkit.data import column_values, require_columns
from hftoolkit.errors import DataError, MetricError, ModelError
from hftoolkit.tasks._classification import LABELS, ClassificationTask
from hftoolkit.tasks._text import ensure_pad_token, token_length_stats, tokenizer_identity, warn_image_paths
from hftoolkit.tasks.base import flat

if TYPE_CHECKING:
    from datasets import Dataset

    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.run.records import DataReport

IGNORE = -100  # label of the positions the loss and the metrics skip (transformers' ignore index)
PREPROCESS_VERSION = 1  # bump when the features change, so cached ones from older versions are not reused
# `hft predict` cuts raw text into words the way CoNLL-style data is cut: runs of word characters, and every other
# visible character on its own ("Seattle." -> "Seattle", ".").
WORD = re.compile(r"\w+|[^\w\s]")
# Per scheme: the prefixes its tags may carry, and those that continue an entity (they must follow B- or I- of the
# same type; "an I- tag that follows nothing"). IOB1 and the IOE schemes let I- open an entity, so nothing to check.
SCHEMES = {
    "IOB1": ("BI", ""),
    "IOB2": ("BI", "I"),
    "IOE1": ("IE", ""),
    "IOE2": ("IE", ""),
    "IOBES": ("BIES", "IE"),
    "BILOU": ("BILU", "IL"),
}
OPENING_OR_INSIDE = "BI"
# Turning B-X into I-X on a word's later subwords is right only where I- means "inside, not first".
ALL_SUBWORD_SCHEMES = ("IOB1", "IOB2")
BAD_LENGTH, BAD_TAG, BAD_START, BAD_MISSING = (
    "tokens and tags differ in length", "unknown tag", "I- tag following nothing", "tokens or tags missing",
)
SEQEVAL_OVERALL = {
    "overall_precision": "precision", "overall_recall": "recall", "overall_f1": "f1", "overall_accuracy": "accuracy",
}
SEQEVAL_PER_TYPE = {"precision": "precision", "recall": "recall", "f1": "f1", "number": "support"}
# This task's own recipe keys (the schema adds them; other tasks' recipes must leave them at their defaults).
RECIPE_FIELDS: dict[str, tuple[Any, Any]] = {
    "dataset.skip_bad_rows": (bool, Field(
        False,
        description="Token classification: drop rows whose tokens and tags differ in length, that hold an unknown tag "
        "or an I- tag following nothing (counted in the data report) instead of stopping at the first one.",
    )),
    "dataset.label_all_subwords": (bool, Field(
        False,
        description="Token classification: every subword of a word carries its tag (B- becomes I- after the first "
        "subword) and is scored; default: only the first subword, the others are ignored (-100).",
    )),
    "evaluation.scheme": (Literal[tuple(SCHEMES)], Field(
        "IOB2",
        description="Token classification: the tagging scheme of the tags; data is checked against it, and entities "
        "are scored (seqeval strict mode) and predicted as spans that are valid in it.",
    )),
}


def align_labels(word_ids: list[int | None], word_tags: list[int], inside: dict[int, int] | None = None) -> list[int]:
    """One label per subword: the word's tag on its first subword; on the others IGNORE, or with `inside`
    (label_all_subwords; maps B-X ids to I-X ids) the word's tag again, B- turned into I-. Special tokens: IGNORE."""
    out: list[int] = []
    previous = None
    for w in word_ids:
        if w is None:
            out.append(IGNORE)
        elif w != previous:
            out.append(word_tags[w])
        else:
            out.append(IGNORE if inside is None else inside.get(word_tags[w], word_tags[w]))
        previous = w
    return out


def entity_spans(text: str, offsets: list[tuple[int, int]], tags: list[str], scores: list[float], scheme: str) -> list[dict]:
    """Entities of one text: B-/I- (etc.) pieces merged into whole spans by seqeval's strict rules for `scheme`.

    `offsets` are the character spans of the words, `tags` and `scores` one per word. An entity's score is the mean of
    its words' probabilities; `end` is exclusive, so `text[start:end]` is the entity's text.
    """
    from seqeval import scheme as schemes
    from seqeval.scheme import Entities

    out = []
    for e in Entities([tags], getattr(schemes, scheme)).entities[0]:
        start, end = offsets[e.start][0], offsets[e.end - 1][1]
        score = sum(scores[e.start : e.end]) / (e.end - e.start)
        out.append({"type": e.tag, "text": text[start:end], "start": start, "end": end, "score": round(score, 6)})
    return out


def tag_sequences(predictions: Any, references: Any, names: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Per example, the predicted and reference tags at the scored positions (reference not IGNORE)."""
    preds, refs = [], []
    for p, r in zip(predictions, references):
        keep = r != IGNORE
        preds.append([names[int(i)] for i in p[keep]])
        refs.append([names[int(i)] for i in r[keep]])
    return preds, refs


def seqeval_scores(pred_tags: list[list[str]], ref_tags: list[list[str]], scheme: str) -> dict[str, float]:
    """precision / recall / f1 (entity level, overall) and accuracy (tokens), plus TYPE/precision ... per entity type."""
    try:
        seqeval = metric_lib.load_metric("seqeval")
        raw = seqeval.compute(predictions=pred_tags, references=ref_tags, scheme=scheme, zero_division=0)
    except MetricError:
        raise
    except Exception as e:
        raise MetricError(f"metric 'seqeval' failed: {type(e).__name__}: {e}") from e
    scores = {SEQEVAL_OVERALL[k]: float(v) for k, v in raw.items() if k in SEQEVAL_OVERALL}
    for entity_type, per in sorted((k, v) for k, v in raw.items() if isinstance(v, dict)):
        scores.update({f"{entity_type}/{SEQEVAL_PER_TYPE[k]}": float(v) for k, v in per.items() if k in SEQEVAL_PER_TYPE})
    return scores


class TokenClassification(ClassificationTask):
    name = "token-classification"
    pipeline_tag = "token-classification"
    card_title = "Token Classification"
    auto_model = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    default_metrics = ("seqeval",)
    processor_kind = "tokenizer"
    column_roles = {
        "tokens": "a list of words per row",
        "tags": "a list of tags per row, one per word (ClassLabel ids or strings)",
    }
    recipe_fields = RECIPE_FIELDS
    predict_example = "Angela Merkel visited Seattle."
    example_words = tuple(WORD.findall(predict_example))  # cut as `hft predict` cuts it
    label_counts_of = "words"
    score_group_title = "entity type"
    serve_kind = "entities"
    onnx_servable = True
    # Measured (bench/RESULTS.md "Defaults by measurement": WikiANN en, all-MiniLM-L6-v2, 3 epochs): a new token head
    # learning 7 tags needs far more than the text default: LoRA 3e-3 (entity F1 0.636; 1e-3 0.580, 1e-2 0.531,
    # 2e-4 0.183), full fine-tuning 2e-4 (0.683; 5e-5 0.648).
    training_defaults = {
        "lora": {"training.learning_rate": 3e-3},
        "full": {"training.learning_rate": 2e-4},
    }
    checked_metric = "f1"  # entity F1: token accuracy is mostly the O tags

    def check_recipe(self, recipe: Recipe) -> list[str]:
        cols, ds = recipe.dataset.columns, recipe.dataset
        missing = [f"dataset.columns.{role}" for role in self.column_roles if getattr(cols, role) is None]
        problems = []
        if missing:
            problems.append(
                f"{' and '.join(missing)} needed: token-classification reads a list of words and a list of tags per row"
            )
        if ds.label_all_subwords and recipe.evaluation.scheme not in ALL_SUBWORD_SCHEMES:
            problems.append(
                f"dataset.label_all_subwords works with evaluation.scheme {' or '.join(ALL_SUBWORD_SCHEMES)} (later "
                f"subwords of a word get its I- tag); {recipe.evaluation.scheme} marks entity ends, which that would break"
            )
        return problems

    def load_processor(self, ref: str, kwargs: dict[str, Any]) -> Any:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(ref, **kwargs)
        if not tokenizer.is_fast:
            raise ModelError(
                f"the tokenizer of {ref!r} is a slow (Python) tokenizer; token classification maps words to subwords "
                "with a fast tokenizer's word_ids(): use a model that ships tokenizer.json"
            )
        # Decoder tokenizers (GPT-2 ...) have no pad token; padded positions carry IGNORE labels, so EOS is harmless.
        return ensure_pad_token(tokenizer, ref, "padded positions are ignored by the loss and the metrics")

    def stratify_column(self, recipe: Recipe) -> str | None:
        return None  # rows hold lists of tags: nothing to stratify by (tag counts come from preprocess)

    # ---------------------------------------------------------------------------------------------------------------
    # Checking and encoding tags on the raw splits

    def prepare(self, splits: dict[str, Dataset], recipe: Recipe, report: DataReport) -> list[str]:
        from datasets import ClassLabel, List

        cols = recipe.dataset.columns
        for role, split in splits.items():
            require_columns(split, role, {"tokens": cols.tokens, "tags": cols.tags})
            report.columns[role] = list(split.column_names)
            words = split.features[cols.tokens]
            if getattr(getattr(words, "feature", None), "dtype", "") not in ("string", "large_string"):
                raise DataError(
                    f"column {cols.tokens!r} of split {role!r} has type {words}; token-classification needs a list of "
                    "words (strings) per row"
                )
        names = self._tag_names(splits, recipe)
        self._check_rows(splits, recipe, names, report)
        for role, split in splits.items():
            if not isinstance(getattr(split.features[cols.tags], "feature", None), ClassLabel):
                splits[role] = split.cast_column(cols.tags, List(ClassLabel(names=names)))
        return names

    def _tag_names(self, splits: dict[str, Dataset], recipe: Recipe) -> list[str]:
        from datasets import ClassLabel

        col, ds = recipe.dataset.columns.tags, recipe.dataset
        assert col is not None
        inner = getattr(splits["train"].features[col], "feature", None)
        dtype = getattr(inner, "dtype", "")
        if isinstance(inner, ClassLabel):
            names = list(inner.names)
            if ds.label_names is not None and ds.label_names != names:
                raise DataError(f"dataset.label_names {ds.label_names} differ from the dataset's own tag names {names}")
        elif dtype in ("string", "large_string"):
            names = sorted({t for row in column_values(splits["train"], col) if row for t in row if t is not None})
        elif dtype.startswith(("int", "uint")) and ds.label_names:
            names = list(ds.label_names)
        elif dtype.startswith(("int", "uint")):
            raise DataError(
                f"column {col!r} holds integer tags without names; give dataset.label_names (e.g. [O, B-PER, I-PER])"
            )
        else:
            raise DataError(
                f"column {col!r} has type {splits['train'].features[col]}; token-classification needs a list of tags per row"
            )
        if ds.num_labels is not None and ds.num_labels != len(names):
            raise DataError(f"dataset.num_labels is {ds.num_labels} but the data has {len(names)} tags: {', '.join(names)}")
        scheme = recipe.evaluation.scheme
        prefixes = SCHEMES[scheme][0]
        for name in names:
            if name != "O" and not (len(name) > 2 and name[0] in prefixes and name[1] == "-"):
                raise DataError(
                    f"tag {name!r} in column {col!r} does not fit evaluation.scheme {scheme} ({'/'.join(prefixes)}-TYPE "
                    "or O); set evaluation.scheme to the data's scheme"
                )
        return names

    def _check_rows(self, splits: dict[str, Dataset], recipe: Recipe, names: list[str], report: DataReport) -> None:
        """Every row: words and tags of equal length, known tags, no continuation tag following nothing. A bad row
        stops the run naming split and row, or with dataset.skip_bad_rows is dropped and counted."""
        cols, skip = recipe.dataset.columns, recipe.dataset.skip_bad_rows
        continuing = SCHEMES[recipe.evaluation.scheme][1]
        index = {n: i for i, n in enumerate(names)}
        for role, split in list(splits.items()):
            bad: dict[str, list[int]] = {}
            words, tags = column_values(split, cols.tokens), column_values(split, cols.tags)
            for i, (w, t) in enumerate(zip(words, tags)):
                problem = row_problem(w, t, names, index, continuing)
                if problem is None:
                    continue
                if not skip:
                    raise DataError(
                        f"split {role!r} row {i}: {problem[1]} (or set dataset.skip_bad_rows: true to drop such rows)"
                    )
                bad.setdefault(problem[0], []).append(i)
            if bad:
                dropped = {i for rows in bad.values() for i in rows}
                splits[role] = split.select([i for i in range(len(split)) if i not in dropped])
                for reason, rows in bad.items():
                    report.dropped[f"{reason}, {role}"] = len(rows)

    # ---------------------------------------------------------------------------------------------------------------
    # Features

    def preprocess(
        self, splits: dict[str, Dataset], recipe: Recipe, tokenizer: Any, report: DataReport
    ) -> dict[str, Dataset]:
        cols, ds = recipe.dataset.columns, recipe.dataset
        names = list(splits["train"].features[cols.tags].feature.names)
        inside = inside_ids(names) if ds.label_all_subwords else None
        words, tags = cols.tokens, cols.tags

        def tokenize(batch: dict[str, list]) -> dict[str, list]:
            enc = tokenizer(batch[words], is_split_into_words=True, truncation=True, max_length=ds.max_length)
            out = dict(enc)
            out[LABELS] = [align_labels(enc.word_ids(i), row, inside) for i, row in enumerate(batch[tags])]
            out["length"] = [len(ids) for ids in enc["input_ids"]]
            # The fast tokenizer keeps what truncation cut off: the words (and their tags) the model never sees.
            out["truncated"] = [len(e.overflowing) > 0 for e in enc.encodings]
            return out

        ident = tokenizer_identity(tokenizer)
        features = {}
        for role, split in splits.items():
            counts = Counter(t for row in column_values(split, tags) for t in row)
            report.label_counts[role] = {name: counts.get(i, 0) for i, name in enumerate(names)}
            key = f"tok{PREPROCESS_VERSION}|{split._fingerprint}|{ident}|{ds.max_length}|{words}|{tags}"
            key += f"|{ds.label_all_subwords}"
            mapped = split.map(
                tokenize, batched=True, batch_size=1000, num_proc=ds.num_proc, remove_columns=split.column_names,
                new_fingerprint=hashlib.sha256(key.encode()).hexdigest()[:32], desc=f"Tokenizing {role}",
            )
            truncated = column_values(mapped, "truncated")
            report.truncated_share[role] = sum(truncated) / max(len(truncated), 1)
            features[role] = mapped.remove_columns(["truncated"])
        report.token_lengths = token_length_stats(features["train"])
        return features

    def collator(self, tokenizer: Any, recipe: Recipe, on_gpu: bool) -> Callable:
        from transformers import DataCollatorForTokenClassification

        # Pads labels with IGNORE; multiples of 8 help tensor cores on GPU and only waste compute on CPU.
        pad = DataCollatorForTokenClassification(
            tokenizer, pad_to_multiple_of=8 if on_gpu else None, label_pad_token_id=IGNORE
        )

        def collate(examples: list[dict]) -> dict:
            # `length` feeds the length-grouped sampler; the model must not see it.
            return pad([{k: v for k, v in ex.items() if k != "length"} for ex in examples])

        return collate

    # ---------------------------------------------------------------------------------------------------------------
    # Metrics, evaluation and prediction

    def metrics(self, recipe: Recipe, labels: list[str] | None) -> Callable:
        names = recipe.evaluation.metrics or list(self.default_metrics)
        tags, scheme = list(labels or []), recipe.evaluation.scheme

        def compute(eval_pred: Any) -> dict[str, float]:
            import numpy as np

            preds, refs = eval_pred.predictions, np.asarray(eval_pred.label_ids)
            preds = np.asarray(preds[0] if isinstance(preds, tuple) else preds)
            if preds.ndim == refs.ndim + 1:
                preds = preds.argmax(-1)
            scored = refs != IGNORE
            results: dict[str, float] = {}
            for name in names:
                if name == "seqeval":
                    results.update(seqeval_scores(*tag_sequences(preds, refs, tags), scheme))
                else:  # any other metric scores the tags token by token
                    flat_preds, flat_refs = preds[scored].tolist(), refs[scored].tolist()
                    results.update(metric_lib.compute([name], flat_preds, flat_refs, len(tags), recipe.evaluation.average))
            return results

        return compute

    def write_eval_artifacts(self, out_dir: Any, predictions: Any, references: Any, labels: list[str] | None) -> list[str]:
        import numpy as np

        preds, refs = np.asarray(predictions), np.asarray(references)
        scored = refs != IGNORE
        # The tag confusion matrix over the scored tokens (first subwords).
        return super().write_eval_artifacts(out_dir, preds[scored].tolist(), refs[scored].tolist(), labels)

    def check_predict_inputs(self, inputs: list[str]) -> None:
        warn_image_paths(inputs)

    def predict_options(self, recipe: Recipe) -> dict[str, Any]:
        return {"scheme": recipe.evaluation.scheme, "max_length": recipe.dataset.max_length}

    def result_line(self, result: dict[str, Any]) -> str:
        """`TYPE "text" [start:end] score; ...<TAB>input`, or `(no entities)`."""
        spans = [f"{e['type']} \"{flat(e['text'])}\" [{e['start']}:{e['end']}] {e['score']:.4f}" for e in result["entities"]]
        return f"{'; '.join(spans) or '(no entities)'}\t{flat(result['input'])}"

    def predict(self, model: Any, tokenizer: Any, inputs: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
        """Per input: {"input", "entities": [{"type", "text", "start", "end", "score"}]}, spans in characters."""
        import torch

        offsets = [[m.span() for m in WORD.finditer(text)] for text in inputs]
        results: list[dict[str, Any]] = [{"input": text, "entities": []} for text in inputs]
        todo = [i for i, o in enumerate(offsets) if o]  # a text without words has no entities
        if not todo:
            return results
        words = [[inputs[i][a:b] for a, b in offsets[i]] for i in todo]
        enc = tokenizer(
            words, is_split_into_words=True, truncation=True, max_length=options["max_length"], padding=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            probs = model(**{k: v.to(model.device) for k, v in enc.items()}).logits.float().softmax(-1).cpu()
        id2label = model.config.id2label
        for row, i in enumerate(todo):
            # Each word is read at its first subword, as it was trained and scored; words cut by truncation stay O.
            tags, scores = ["O"] * len(offsets[i]), [1.0] * len(offsets[i])
            previous = None
            for position, w in enumerate(enc.word_ids(row)):
                if w is not None and w != previous:
                    best = int(probs[row, position].argmax())
                    tags[w], scores[w] = id2label[best], float(probs[row, position, best])
                previous = w
            results[i]["entities"] = entity_spans(inputs[i], offsets[i], tags, scores, options["scheme"])
        return results

    # ---------------------------------------------------------------------------------------------------------------
    # Deploy

    def onnx_usage(self, model_file: str, tokenizer: Any, config: Any) -> str:
        from hftoolkit.tasks._token_onnx import ONNX_USAGE, USAGE_TEXTS

        return ONNX_USAGE.format(model_file=model_file, word=WORD.pattern, texts=USAGE_TEXTS)


def row_problem(words: Any, tags: Any, names: list[str], index: dict[str, int], continuing: str) -> tuple[str, str] | None:
    """(reason, message) for a bad row, or None. Tags are ids into `names` or names themselves (`index`: name -> id);
    `continuing`: the prefixes that must follow B- or I- of the same type."""
    if words is None or tags is None or any(w is None for w in words) or any(t is None for t in tags):
        return BAD_MISSING, "tokens or tags are missing (null)"
    if len(words) != len(tags):
        return BAD_LENGTH, f"{len(words)} tokens but {len(tags)} tags"
    previous = "O"
    for j, t in enumerate(tags):
        name = t if isinstance(t, str) else names[t] if 0 <= t < len(names) else None
        if name is None or name not in index:
            known = f"is outside the known tags 0..{len(names) - 1}"
            shown = f"{t!r} does not occur in train" if isinstance(t, str) else f"{t} {known}"
            return BAD_TAG, f"tag {shown} (word {j})"
        if name[0] in continuing and not (previous[0] in OPENING_OR_INSIDE and previous[2:] == name[2:] and previous != "O"):
            after = "the start of the row" if j == 0 else f"{previous!r}"
            return BAD_START, f"tag {name!r} at word {j} follows {after}; an entity starts with B-{name[2:]}"
        previous = name
    return None


def inside_ids(names: list[str]) -> dict[int, int]:
    """B-X id -> I-X id, for the later subwords of a word (label_all_subwords)."""
    index = {n: i for i, n in enumerate(names)}
    return {i: index[f"I-{n[2:]}"] for i, n in enumerate(names) if n.startswith("B-") and f"I-{n[2:]}" in index}


TASK = TokenClassification()
