"""Writes the quickstart dataset: short product reviews labelled positive/negative, split train/validation/test.

Sentences are composed from hand-written fragments with a fixed seed, so the files are reproducible:
    python recipes/data/make_reviews.py
"""

import json
import random
from pathlib import Path

PRODUCTS = [
    "headphones", "coffee maker", "backpack", "phone case", "desk lamp", "keyboard", "running shoes", "blender",
    "tent", "water bottle", "office chair", "monitor", "toaster", "umbrella", "jacket", "vacuum cleaner",
    "e-reader", "kettle", "webcam", "mattress",
]
POSITIVE = [
    "works perfectly", "is worth every penny", "exceeded my expectations", "feels sturdy and well made",
    "is a joy to use", "arrived quickly and works great", "is the best purchase I made this year",
    "does exactly what it promises", "is comfortable and reliable", "looks beautiful on my desk",
    "has excellent battery life", "was easy to set up", "still works flawlessly after months",
    "is quiet and efficient", "made my mornings so much better",
]
NEGATIVE = [
    "broke after two days", "is a complete waste of money", "stopped working within a week",
    "feels cheap and flimsy", "is frustrating to use", "arrived damaged and support never answered",
    "is the worst purchase I made this year", "does not do what it promises", "is uncomfortable and unreliable",
    "looks nothing like the pictures", "has terrible battery life", "was impossible to set up",
    "fell apart after a month", "is loud and wastes energy", "made my mornings miserable",
]
OPENERS = ["", "Honestly, ", "After a month of use, ", "I have to say ", "To be fair, ", "Overall, ", "Sadly, ", "Wow, "]
CLOSERS = [
    "", " Would recommend.", " Would not recommend.", " Five stars.", " One star.", " I am returning it.",
    " Buying another one for my sister.", " Never again.",
]
POS_CLOSERS = {"", " Would recommend.", " Five stars.", " Buying another one for my sister."}
NEG_CLOSERS = {"", " Would not recommend.", " One star.", " I am returning it.", " Never again."}


def review(rng: random.Random) -> dict:
    label = rng.choice(["positive", "negative"])
    phrases = POSITIVE if label == "positive" else NEGATIVE
    closers = sorted(POS_CLOSERS if label == "positive" else NEG_CLOSERS)
    product = rng.choice(PRODUCTS)
    text = f"{rng.choice(OPENERS)}the {product} {rng.choice(phrases)}."
    if rng.random() < 0.4:
        text = text[:-1] + f" and {rng.choice(phrases)}."
    text = text[0].upper() + text[1:] + rng.choice(closers)
    return {"text": text, "label": label}


def main() -> None:
    rng = random.Random(20261123)
    seen, rows = set(), []
    while len(rows) < 1000:
        r = review(rng)
        if r["text"] not in seen:  # no duplicate sentences across splits, so test accuracy is held-out
            seen.add(r["text"])
            rows.append(r)
    out = Path(__file__).parent / "reviews"
    out.mkdir(exist_ok=True)
    for name, part in {"train": rows[:700], "validation": rows[700:850], "test": rows[850:]}.items():
        with open(out / f"{name}.jsonl", "w") as f:
            for r in part:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
