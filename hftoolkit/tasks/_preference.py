"""Preference pairs for DPO / ORPO (causal-lm with training.objective dpo or orpo): checks, normalising, lengths.

What a row holds: `prompt` (optional column) and `chosen` / `rejected`, either plain strings or conversational turns
({role, content} lists) rendered with the chat template under the same end-of-turn rules as SFT.
- With a prompt column, chosen and rejected are the replies (assistant turns); a side that repeats the prompt turns
  first must repeat them exactly. Without one, each side is a whole conversation and the prompt is the turns before
  its final assistant replies, which must be the same on both sides (TRL's implicit-prompt layout).
- Bad pairs (an empty side, chosen == rejected, prompts that differ between the sides, malformed turns) stop the run
  naming split and row, or are counted and dropped with `dataset.skip_bad_pairs: true`.
- Long pairs are normal: TRL keeps the prompt whole and cuts the completions at max_length (DPOConfig truncation_mode
  keep_start; ORPO truncates its completions the same way); a pair whose prompt leaves no room for a completion token
  is dropped and counted here (TRL would drop it from DPO itself, and ORPO would train on an empty completion). The
  share of pairs whose longer side is cut is reported; only a split left empty is an error (pipeline.prepare_data).

The features handed to TRL are the normalised rows (prompt, chosen, rejected) plus `length` for the length-grouped
sampler: TRL tokenizes them itself, so training sees exactly what TRL's trainers do with such data.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from hftoolkit.data import column_values, require_columns
from hftoolkit.errors import DataError, HftError
from hftoolkit.tasks._chat import CHAT_ROLES, ChatFormat
from hftoolkit.tasks._text import length_stats, tokenizer_identity

if TYPE_CHECKING:
    from datasets import Dataset

    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.run.records import DataReport

log = logging.getLogger("hftoolkit")
ROLES = ("prompt", "chosen", "rejected")
TESTED_TRL = ">=1.16,<1.17"  # pyproject's `preference` extra; ORPO lives in trl.experimental, which moves
# Tokens a pair's prompt must leave free within max_length: the BOS token ORPO may prepend, and one completion token.
RESERVED_TOKENS = 2
PREPROCESS_VERSION = 1
LENGTH_SAMPLE = 10000  # training pairs the token-length statistics are computed on (as for SFT)


class BadPair(Exception):
    """One row's problem; raised as a DataError naming split and row, or counted when skip_bad_pairs."""


def _check_turns(turns: Any, side: str) -> list[dict[str, str]]:
    if not isinstance(turns, list) or not turns:
        raise BadPair(f"{side} is an empty list of turns" if isinstance(turns, list) else f"{side} is neither text nor turns")
    out = []
    for m in turns:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise BadPair(f"{side}: turn {m!r} is not a {{role, content}} object with text content")
        if m["role"] not in CHAT_ROLES:
            raise BadPair(f"{side}: unknown chat role {m['role']!r} (known roles: {', '.join(CHAT_ROLES)})")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _split_side(turns: list[dict[str, str]], side: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(the turns before the final assistant replies, those replies)."""
    cut = len(turns)
    while cut and turns[cut - 1]["role"] == "assistant":
        cut -= 1
    if cut == len(turns):
        raise BadPair(f"{side} does not end with an assistant turn")
    reply = turns[cut:]
    if not any(m["content"].strip() for m in reply):
        raise BadPair(f"{side} is empty (its assistant turns have no text)")
    return turns[:cut], reply


def normalise_chat(prompt: Any, chosen: Any, rejected: Any) -> dict[str, Any]:
    """A conversational pair as (prompt turns, chosen reply turns, rejected reply turns); BadPair when it is not one."""
    sides = {}
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        sides[name] = _split_side(_check_turns(value, name), name)
    if prompt is not None:
        prompt = _check_turns(prompt, "prompt")
        if prompt[-1]["role"] == "assistant":
            raise BadPair("prompt ends with an assistant turn; the reply to learn belongs in chosen / rejected")
        for name, (before, _) in sides.items():
            if before and before != prompt:
                raise BadPair(f"the prompt differs between the prompt column and the turns {name} repeats")
    else:
        (before_c, _), (before_r, _) = sides["chosen"], sides["rejected"]
        if before_c != before_r:
            raise BadPair("the prompt differs between chosen and rejected (the turns before their final replies)")
        if not before_c:
            raise BadPair("chosen has no prompt turns (without dataset.columns.prompt, each side is a whole conversation)")
        prompt = before_c
    if sides["chosen"][1] == sides["rejected"][1]:
        raise BadPair("chosen and rejected are identical")
    return {"prompt": prompt, "chosen": sides["chosen"][1], "rejected": sides["rejected"][1]}


def normalise_text(prompt: Any, chosen: Any, rejected: Any) -> dict[str, Any]:
    for name, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):
            what = "missing (null)" if value is None else f"{type(value).__name__}, not text like the other rows"
            raise BadPair(f"{name} is {what}")
        if not value.strip():
            raise BadPair(f"{name} is empty or whitespace only")
    if chosen == rejected:
        raise BadPair("chosen and rejected are identical")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _columns(recipe: Recipe) -> dict[str, str | None]:
    c = recipe.dataset.columns
    return {"prompt": c.prompt, "chosen": c.chosen, "rejected": c.rejected}


def _is_chat(split: Dataset, columns: dict[str, str | None]) -> bool:
    first = split.select_columns([columns["chosen"]])[0][columns["chosen"]] if len(split) else None
    return isinstance(first, list)


def require_trl(objective: str) -> None:
    """TRL is an extra: say how to get it, and warn when the installed version is not the tested one."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.specifiers import SpecifierSet

    try:
        installed = version("trl")
    except PackageNotFoundError:
        raise HftError(
            f"training.objective {objective} trains through TRL, which is not installed; pip install 'hftoolkit[preference]'"
        ) from None
    if installed not in SpecifierSet(TESTED_TRL):
        log.warning("TRL %s is installed; hft's preference tuning is tested with trl%s", installed, TESTED_TRL)


def check_pairs(splits: dict[str, Dataset], recipe: Recipe, report: DataReport) -> None:
    """Check every row of the raw splits (row numbers are the source's); drop bad pairs when the recipe asks."""
    require_trl(recipe.training.objective)
    columns = _columns(recipe)
    for role, split in list(splits.items()):
        require_columns(split, role, columns)
        report.columns[role] = list(split.column_names)
        chat = _is_chat(split, columns)
        if not chat and columns["prompt"] is None:
            raise DataError(
                f"split {role!r}: chosen and rejected are plain text, so dataset.columns.prompt must name the prompt "
                "column (only conversations carry their prompt in their turns)"
            )
        values = {r: column_values(split, c) if c else [None] * len(split) for r, c in columns.items()}
        normalise = normalise_chat if chat else normalise_text
        bad: Counter[str] = Counter()
        keep = []
        for i, row in enumerate(zip(*(values[r] for r in ROLES))):
            try:
                normalise(*row)
            except BadPair as e:
                if not recipe.dataset.skip_bad_pairs:
                    raise DataError(
                        f"split {role!r} row {i}: {e}; fix or remove the pair, or set dataset.skip_bad_pairs: true "
                        "to drop such pairs (they are counted in the data report)"
                    ) from None
                bad[str(e).split(" (")[0]] += 1
                continue
            keep.append(i)
        for reason, n in bad.items():
            report.dropped[f"{reason}, {role}"] = n
        if len(keep) < len(split):
            splits[role] = split.select(keep)
        report.notes.append(f"preference pairs ({role}): {'conversational' if chat else 'plain text'}")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class _Lengths:
    """Token counts of a pair as TRL's trainers see it: the prompt with the generation prompt, each completion as what
    the whole conversation (or text) adds after it, plus the EOS token TRL appends to plain-text completions."""

    def __init__(self, tokenizer: Any, chat: bool):
        self.tokenizer, self.chat = tokenizer, chat

    def ids(self, prompt: Any, completion: Any = None) -> list[int]:
        if self.chat:
            turns = prompt + (completion or [])
            return self.tokenizer.apply_chat_template(turns, tokenize=True, return_dict=True, add_generation_prompt=completion is None)["input_ids"]
        text = prompt + (completion or "")
        ids = self.tokenizer(text)["input_ids"]
        if completion is not None and (not ids or ids[-1] != self.tokenizer.eos_token_id):
            ids = ids + [self.tokenizer.eos_token_id]
        return ids

    def __call__(self, row: dict[str, Any]) -> tuple[int, int]:
        """(prompt tokens, tokens of the longer side including its prompt)."""
        prompt = len(self.ids(row["prompt"]))
        return prompt, max(len(self.ids(row["prompt"], row[side])) for side in ("chosen", "rejected"))


def build_features(splits: dict[str, Dataset], recipe: Recipe, tokenizer: Any, report: DataReport) -> dict[str, Dataset]:
    """Normalised pairs + `length`; pairs whose prompt fills max_length dropped and counted; truncation reported."""
    columns, max_length = _columns(recipe), recipe.dataset.max_length
    chats = {_is_chat(s, columns) for s in splits.values() if len(s)}
    if len(chats) > 1:
        raise DataError("the splits mix plain-text and conversational pairs; give every split the same kind")
    chat = chats.pop() if chats else True
    if chat:  # SFT's end-of-turn rules (may make dataset.end_of_turn_token the EOS token: before the identity)
        ChatFormat(tokenizer, recipe.model.name).adopt_end_of_turn(recipe.dataset.end_of_turn_token)
    lengths = _Lengths(tokenizer, chat)
    normalise = normalise_chat if chat else normalise_text

    def features(batch: dict[str, list]) -> dict[str, list]:
        n = len(batch[columns["chosen"]])
        prompts = batch[columns["prompt"]] if columns["prompt"] else [None] * n
        rows = [normalise(*row) for row in zip(prompts, batch[columns["chosen"]], batch[columns["rejected"]])]
        measured = [lengths(row) for row in rows]
        out: dict[str, list] = {r: [row[r] for row in rows] for r in ROLES}
        out["length"] = [min(full, max_length) for _, full in measured]
        out["truncated"] = [full > max_length for _, full in measured]
        out["keep"] = [prompt + RESERVED_TOKENS <= max_length for prompt, _ in measured]
        return out

    ident = "|".join([
        f"pref{PREPROCESS_VERSION}", tokenizer_identity(tokenizer), _sha(tokenizer.chat_template or "") if chat else "",
        str(tokenizer.eos_token), str(max_length), str(columns), recipe.training.objective,
    ])
    out: dict[str, Dataset] = {}
    for role, split in splits.items():
        fingerprint = _sha(f"{ident}|{split._fingerprint}")
        mapped = split.map(
            features, batched=True, batch_size=1000, num_proc=recipe.dataset.num_proc, remove_columns=split.column_names,
            new_fingerprint=fingerprint, desc=f"Measuring {role} pairs",
        )
        keep = mapped["keep"]
        kept = mapped.filter(
            lambda k: k, input_columns=["keep"], batched=True, batch_size=10000, new_fingerprint=_sha(f"{fingerprint}|keep"),
        )
        if len(kept) < len(mapped):
            report.dropped[f"prompt leaves no room for a completion within max_length {max_length}, {role}"] = len(mapped) - len(kept)
        truncated = [t for t, k in zip(mapped["truncated"], keep) if k]
        report.truncated_share[role] = sum(truncated) / max(len(truncated), 1)
        out[role] = kept.remove_columns(["truncated", "keep"])
    if "train" in out and len(out["train"]):
        report.token_lengths = length_stats(out["train"]["length"][:LENGTH_SAMPLE])
    return out
