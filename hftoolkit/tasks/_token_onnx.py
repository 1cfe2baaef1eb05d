"""The README snippet of a token-classification ONNX export: entities from model.onnx with onnxruntime and tokenizers
alone (no torch, no transformers); tests/test_deploy_tasks.py runs it and compares it with `hft predict`."""

# The export's README (`hft export`): model.onnx with onnxruntime and tokenizers alone. Words are cut as `hft predict`
# cuts them, each word is read at its first subword (the tokenizer's word_ids), and B-/I- pieces are merged as
# seqeval's strict IOB2 does (runs tagged in another scheme print the tag of every word instead).
ONNX_USAGE = '''```python
import json
import re

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

tokenizer = Tokenizer.from_file("tokenizer.json")
tokenizer.no_padding()
tokenizer.enable_truncation(max_length=json.load(open("export_report.json"))["predict_options"]["max_length"])
session = ort.InferenceSession("{model_file}", providers=["CPUExecutionProvider"])
names = {{i.name for i in session.get_inputs()}}
id2label = json.load(open("config.json"))["id2label"]
WORD = re.compile({word!r})


def word_tags(text):
    spans = [m.span() for m in WORD.finditer(text)]
    e = tokenizer.encode([text[a:b] for a, b in spans], is_pretokenized=True)
    feed = {{"input_ids": [e.ids], "attention_mask": [e.attention_mask], "token_type_ids": [e.type_ids]}}
    logits = session.run(["logits"], {{k: np.array(v, dtype=np.int64) for k, v in feed.items() if k in names}})[0][0]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    tags, scores, previous = ["O"] * len(spans), [1.0] * len(spans), None
    for position, w in enumerate(e.word_ids):
        if w is not None and w != previous:  # the first subword of each word
            tags[w], scores[w] = id2label[str(int(probs[position].argmax()))], float(probs[position].max())
        previous = w
    return spans, tags, scores


def entities(text):
    spans, tags, scores = word_tags(text)
    out, open_ = [], None
    for j, tag in enumerate(tags + ["O"]):
        if open_ and not (tag == "I-" + open_[0]):
            kind, first = open_
            start, end = spans[first][0], spans[j - 1][1]
            score = sum(scores[first:j]) / (j - first)
            out.append({{"type": kind, "text": text[start:end], "start": start, "end": end, "score": round(score, 6)}})
            open_ = None
        if tag.startswith("B-"):
            open_ = (tag[2:], j)
    return out


scheme = json.load(open("export_report.json"))["predict_options"]["scheme"]
for text in {texts!r}:
    if scheme == "IOB2":
        print(json.dumps({{"input": text, "entities": entities(text)}}))
    else:  # the merging above is IOB2's: print each word's tag
        print(json.dumps({{"input": text, "tags": word_tags(text)[1]}}))
```'''
USAGE_TEXTS = ["alice smith visited new york.", "the kettle works."]
