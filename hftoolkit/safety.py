"""What hft refuses to load or publish: pickle files and secrets. One list each, used by loading, resume and push.

Pickles can run code when loaded, so weights load from safetensors and checkpoints load with `weights_only`;
secrets (tokens, keys, credential files) must never leave the machine in a recipe, a commit or a model card.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

# Suffixes of files that torch.load / pickle.load / joblib / numpy(allow_pickle) would unpickle.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy")
HF_TOKEN_PATTERN = re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}")
_PICKLE_PROTOCOLS = range(2, 6)  # protocols 2-5 start with the PROTO opcode 0x80 and the protocol number


def looks_like_pickle(path: Path) -> bool:
    """By name, by pickle header, or a torch.save zip holding a .pkl member."""
    if path.name.endswith(PICKLE_SUFFIXES):
        return True
    try:
        with path.open("rb") as f:
            head = f.read(4)
        if len(head) >= 2 and head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS:
            return True
        if head == b"PK\x03\x04" and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return any(n.endswith(".pkl") for n in z.namelist())
    except OSError:
        return False
    return False
