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

# Credential files recognised by name alone (their content may be anything).
SECRET_FILE_NAMES = (".env", ".netrc", ".git-credentials", ".pypirc", "id_rsa", "id_ecdsa", "id_ed25519", "credentials")
SECRET_FILE_PREFIXES = (".env",)  # .env.local, .env.production ...
SECRET_SUFFIXES = (".env", ".pem", ".key", ".p12", ".pfx")
# What a secret looks like inside a text, each named for the message (which never quotes the match).
SECRET_CONTENT = {
    "a Hugging Face access token (hf_...)": re.compile(HF_TOKEN_PATTERN.pattern.encode()),
    "a PEM private key": re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"),
    "an environment-file secret (NAME=value with SECRET/TOKEN/PASSWORD/KEY in the name)": re.compile(
        rb"(?m)^[ \t]*(?:export[ \t]+)?[A-Z0-9_]*(?:SECRET|TOKEN|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY)"
        rb"[A-Z0-9_]*[ \t]*=[ \t]*\S"
    ),
    "an AWS access key id": re.compile(rb"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"),
}
SECRET_SCAN_LIMIT = 50 * 1024 * 1024  # larger files are weights, not configs or notes: not scanned
BINARY_SNIFF_BYTES = 8192  # a NUL byte in the first 8 KiB marks binary data (git's heuristic)


def token_path(value: object, path: str = "") -> str | None:
    """The dotted path of the first string holding a Hugging Face token in nested dicts / lists (None: none)."""
    if isinstance(value, str):
        return path if HF_TOKEN_PATTERN.search(value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found = token_path(child, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]")
        if found:
            return found
    return None


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


def is_binary(data: bytes) -> bool:
    """Weights, images and other binary data (git's NUL-byte heuristic): not scanned as text."""
    return b"\0" in data[:BINARY_SNIFF_BYTES]


def is_secret_file_name(name: str) -> bool:
    """A credentials file by its name alone (.env*, .netrc, id_rsa, *.pem ...), whatever it holds."""
    name = name.lower()
    return name in SECRET_FILE_NAMES or name.startswith(SECRET_FILE_PREFIXES) or name.endswith(SECRET_SUFFIXES)


def secret_kind(data: bytes) -> str | None:
    """What secret `data` seems to hold, or None. Binary data (weights, images) is not scanned."""
    if is_binary(data):
        return None
    for kind, pattern in SECRET_CONTENT.items():
        if pattern.search(data):
            return kind
    return None
