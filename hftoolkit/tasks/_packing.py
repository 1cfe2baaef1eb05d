"""How causal-LM examples become training rows beyond one padded row each: packing several examples into one row
(`dataset.batching: packed`) and cutting concatenated text into fixed-length blocks (`dataset.batching: blocks`).
"""

from __future__ import annotations

import hashlib
from itertools import chain
from typing import TYPE_CHECKING

from hftoolkit.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

    from hftoolkit.run.records import DataReport

IGNORE_INDEX = -100  # label of tokens that are not learned (prompt, padding); the loss and the metrics skip them


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


def cut_blocks(features: Dataset, role: str, size: int, report: DataReport) -> Dataset:
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
        new_fingerprint=hashlib.sha256(f"{features._fingerprint}|blocks{size}".encode()).hexdigest()[:32],
        desc=f"Cutting {role} into blocks",
    )
    if len(grouped) == 0:
        raise DataError(
            f"split {role!r} has {total} tokens, fewer than one block of dataset.max_length {size}; lower max_length "
            "or give the split more text"
        )
    report.notes.append(f"blocks ({role}): {len(grouped)} blocks of {size} tokens from {total} tokens")
    return grouped
