"""Builders for tiny models and datasets used across the tests (no downloads: everything is made locally).

Kept as plain functions so conftest fixtures, benchmark smoke tests and helper scripts can all call them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REVIEWS = REPO / "recipes" / "data" / "reviews"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def review_vocab() -> list[str]:
    """Word-level vocabulary of the shipped review dataset plus single characters, so nothing maps to [UNK]."""
    words: set[str] = set()
    for f in REVIEWS.glob("*.jsonl"):
        for line in f.read_text().splitlines():
            text = json.loads(line)["text"].lower()
            for w in text.replace(".", " . ").replace(",", " , ").replace("-", " - ").split():
                words.add(w)
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?'-")
    return SPECIALS + sorted(words) + sorted(set(chars) - words) + [f"##{c}" for c in chars]


def build_tiny_bert(out: Path, *, num_labels: int | None = None, seed: int = 0) -> Path:
    """A 2-layer BERT (hidden 32) with a WordPiece tokenizer, saved as safetensors to `out`."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = review_vocab()
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
    )
    tokenizer = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    if num_labels is None:
        model = BertModel(config)
        model.config.architectures = ["BertModel"]
    else:
        from transformers import BertForSequenceClassification

        config.num_labels = num_labels
        model = BertForSequenceClassification(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def small_reviews(out: Path, n_train: int = 200, n_val: int = 60, n_test: int = 60, seed: int = 0) -> dict[str, Path]:
    """Subsets of the shipped review dataset as jsonl files (text, label strings)."""
    rows = {s: [json.loads(x) for x in (REVIEWS / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "validation", "test")}
    rng = random.Random(seed)
    sizes = {"train": n_train, "validation": n_val, "test": n_test}
    return {s: write_jsonl(out / f"{s}.jsonl", rng.sample(rows[s], min(sizes[s], len(rows[s])))) for s in sizes}


def text_cls_recipe(path: Path, model_path: Path, files: dict[str, Path], output_dir: Path, **sections) -> Path:
    """A fast text-classification recipe for the tiny BERT; `sections` are merged over the defaults."""
    import yaml

    recipe = {
        "task": "text-classification",
        "model": {"name": str(model_path)},
        "dataset": {
            "files": {k: str(v) for k, v in files.items()},
            "columns": {"text": "text", "label": "label"},
            "max_length": 32,
        },
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "training": {
            "epochs": 2, "batch_size": 16, "learning_rate": 5e-3, "logging_steps": 2, "report_to": ["none"], "seed": 7,
        },
        "output_dir": str(output_dir),
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Causal LM: tiny random GPT-2 and Llama with byte-level BPE tokenizers trained here, and small text/chat datasets.

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_WORDS = (
    "the a one two three red blue green small big cat dog bird fish tree house river hill runs jumps sees eats likes "
    "quickly slowly today never always and or but because under over near far water bread song light night day"
).split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + "."


def _byte_bpe(specials: list[str], vocab_size: int = 320):
    """A byte-level BPE trained on the fixture vocabulary: any text encodes (byte fallback), words are short."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    rng = random.Random(0)
    tok.train_from_iterator([_sentence(rng, rng.randint(3, 12)) for _ in range(500)], trainer)
    return tok


def build_tiny_gpt2(out: Path, *, seed: int = 0) -> Path:
    """A 2-layer GPT-2 (hidden 32) whose GPT-2 tokenizer has no pad token, like the real one."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    state = json.loads(_byte_bpe(["<|endoftext|>"]).to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    tokenizer = GPT2Tokenizer(vocab=state["vocab"], merges=merges, model_max_length=1024)
    assert tokenizer.pad_token is None
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=1024, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_llama(out: Path, *, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 32, grouped-query attention) with a ChatML chat template whose end-of-turn is EOS."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_byte_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
        bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>", model_max_length=1024,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def lm_text_data(out: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, Path]:
    """Plain-text jsonl splits (`text`), one to six sentences per row so lengths vary a lot."""
    rng = random.Random(seed)
    sizes = sizes or {"train": 96, "validation": 24, "test": 24}
    return {
        s: write_jsonl(out / f"{s}.jsonl", [
            {"text": " ".join(_sentence(rng, rng.randint(3, 8)) for _ in range(rng.randint(1, 6)))} for _ in range(n)
        ])
        for s, n in sizes.items()
    }


def lm_chat_data(out: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, Path]:
    """Chat jsonl splits: `messages` (system?/user/assistant, sometimes two exchanges) plus `prompt`/`response`."""
    rng = random.Random(seed)
    sizes = sizes or {"train": 64, "validation": 16, "test": 16}

    def row() -> dict:
        prompt, response = _sentence(rng, rng.randint(3, 8)), _sentence(rng, rng.randint(2, 10))
        messages = [{"role": "system", "content": "Answer briefly."}] if rng.random() < 0.3 else []
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        if rng.random() < 0.3:
            messages += [{"role": "user", "content": _sentence(rng, 4)}, {"role": "assistant", "content": _sentence(rng, 3)}]
        return {"messages": messages, "prompt": prompt, "response": response}

    return {s: write_jsonl(out / f"{s}.jsonl", [row() for _ in range(n)]) for s, n in sizes.items()}


def causal_lm_recipe(path: Path, model_path: Path, files: dict[str, Path], output_dir: Path, **sections) -> Path:
    """A fast causal-LM recipe for the tiny models; `sections` are merged over the defaults (columns: text)."""
    import yaml

    recipe = {
        "task": "causal-lm",
        "model": {"name": str(model_path)},
        "dataset": {"files": {k: str(v) for k, v in files.items()}, "columns": {"text": "text"}, "max_length": 128},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "training": {
            "epochs": 1, "batch_size": 8, "learning_rate": 5e-3, "logging_steps": 2, "report_to": ["none"], "seed": 7,
        },
        "output_dir": str(output_dir),
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Image classification: a tiny random ViT with a local image processor, and a small imagefolder of coloured images.


def build_tiny_vit(out: Path, *, num_labels: int | None = None, image_size: int = 32, seed: int = 0) -> Path:
    """A 2-layer ViT (hidden 32, 8x8 patches) and its image processor (size, mean/std), saved as safetensors.

    Without `num_labels` it is a headless ViTModel, like google/vit-base-patch16-224-in21k; with it, a checkpoint
    that already has a head for that many classes (for model.replace_head tests).
    """
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil, ViTModel

    config = ViTConfig(
        image_size=image_size, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64,
    )
    torch.manual_seed(seed)
    if num_labels is None:
        model = ViTModel(config, add_pooling_layer=False)
        model.config.architectures = ["ViTModel"]
    else:
        config.num_labels = num_labels
        model = ViTForImageClassification(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor = ViTImageProcessorPil(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    processor.save_pretrained(out)
    return out


COLOURS = {"blue": (40, 60, 200), "red": (200, 40, 40)}


def colour_image(rng: random.Random, colour: str, size: tuple[int, int], mode: str = "RGB"):
    """A noisy image of one colour class (PIL), converted to `mode` (L and RGBA exercise the RGB conversion)."""
    import numpy as np
    from PIL import Image

    w, h = size
    noise = np.random.default_rng(rng.randrange(2**32)).integers(-40, 40, size=(h, w, 3))
    pixels = np.clip(np.array(COLOURS[colour]) + noise, 0, 255).astype("uint8")
    image = Image.fromarray(pixels, "RGB")
    if mode == "RGBA":
        alpha = np.full((h, w), 255, dtype="uint8")
        alpha[: h // 3] = 0  # a transparent band, as in a cut-out product photo
        image.putalpha(Image.fromarray(alpha, "L"))
    elif mode != "RGB":
        image = image.convert(mode)
    return image


def colour_imagefolder(out: Path, per_class: dict[str, int] | None = None, seed: int = 0) -> Path:
    """imagefolder layout `{train,val,test}/{blue,red}/*`: PNG and JPEG (one `.jpeg`), sizes 20-60 px, one grayscale
    and one RGBA image in train. `val` is the folder name datasets maps to the validation split."""
    rng = random.Random(seed)
    per_class = per_class or {"train": 16, "val": 6, "test": 6}
    for split, n in per_class.items():
        for colour in COLOURS:
            folder = out / split / colour
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                mode = "RGB"
                if split == "train" and i == 0:
                    mode = "L" if colour == "red" else "RGBA"
                size = (rng.randint(20, 60), rng.randint(20, 60))
                image = colour_image(rng, colour, size, mode)
                if mode == "RGBA" or i % 2:
                    image.save(folder / f"{colour}_{i}.png")
                else:
                    image.save(folder / f"{colour}_{i}.{'jpeg' if i == 2 else 'jpg'}", quality=90)
    return out


def image_cls_recipe(path: Path, model_path: Path, data_dir: Path, output_dir: Path, **sections) -> Path:
    """A fast image-classification recipe for the tiny ViT on an imagefolder; `sections` are merged over the defaults."""
    import yaml

    recipe = {
        "task": "image-classification",
        "model": {"name": str(model_path)},
        "dataset": {"name": str(data_dir)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "training": {
            "epochs": 3, "batch_size": 8, "learning_rate": 5e-3, "logging_steps": 2, "report_to": ["none"], "seed": 7,
        },
        "output_dir": str(output_dir),
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def lm_preference_data(out: Path, sizes: dict[str, int] | None = None, seed: int = 0, chat: bool = True) -> dict[str, Path]:
    """Preference jsonl splits (`prompt`, `chosen`, `rejected`): the chosen reply always starts "Yes.", the rejected
    one "No.", so a few DPO steps can learn the preference. Conversational turns by default, plain strings otherwise."""
    rng = random.Random(seed)
    sizes = sizes or {"train": 48, "validation": 16, "test": 16}

    def row() -> dict:
        prompt, tail = _sentence(rng, rng.randint(3, 8)), _sentence(rng, rng.randint(2, 6))
        chosen, rejected = f"Yes. {tail}", f"No. {_sentence(rng, rng.randint(2, 6))}"
        if not chat:
            return {"prompt": f"Q: {prompt}\nA:", "chosen": f" {chosen}", "rejected": f" {rejected}"}
        return {
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }

    return {s: write_jsonl(out / f"{s}.jsonl", [row() for _ in range(n)]) for s, n in sizes.items()}


# Declining replies ("I'm sorry", "I can't" ...): HH-RLHF harmless pairs whose chosen reply declines and whose rejected
# one does not hold one preference a short DPO run can learn and that generalises to held-out pairs of that kind.
DECLINES = r"\b(sorry|I can.?t|I won.?t|I don.?t think|not comfortable|I.?m not sure|cannot)\b"


def hh_decline_pairs(path: Path, count: int, seed: int = 0) -> list[dict]:
    """`count` HH-RLHF harmless pairs (TRL's conversational layout) whose chosen reply declines and whose rejected
    one does not, the ones with the shortest prompts, in a seeded order (no pair with an empty reply)."""
    import re

    declines = re.compile(DECLINES, re.I)
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]
    pairs = [
        r for r in rows
        if all(m["content"].strip() for side in ("chosen", "rejected") for m in r[side])
        and declines.search(r["chosen"][0]["content"]) and not declines.search(r["rejected"][0]["content"])
    ]
    pairs = sorted(pairs, key=lambda r: len(json.dumps(r["prompt"])))[:count]
    random.Random(seed).shuffle(pairs)
    return pairs
