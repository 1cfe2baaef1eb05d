"""Why a local data file could not be read, in one line naming the file, the line or byte and what to do.

`datasets` reports a bad file with whatever its builder hit first (a pandas ValueError for a broken JSON line,
UnicodeDecodeError with an offset inside one chunk for latin-1 bytes, StopIteration for an empty file), so the
message never names the line and often not the file. After a load has failed, each file is scanned here with the
standard library: plain byte and JSON parsing, no guessing from the library's message text. Only failed loads are
scanned, so a good dataset is never read twice.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path

SCAN_CHUNK = 1 << 20  # bytes read at a time: the scan runs in constant memory on large files
GUESS_BYTES = 1 << 22  # bytes used to guess the encoding of a file that is not UTF-8
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def file_problem(path: Path, fmt: str) -> str | None:
    """What is wrong with a csv/json/text data file (`fmt` is the datasets builder name), or None if nothing we know."""
    if fmt == "parquet":
        return None  # binary: datasets' own error (pyarrow's) already names what is broken
    problem = encoding_problem(path)
    if problem is not None:
        return problem
    if is_empty(path, fmt):
        return "empty"
    if fmt == "json":
        return json_problem(path)
    return None


def encoding_problem(path: Path) -> str | None:
    """Where a file stops being UTF-8 (byte offset and line), the encoding it probably is, and the command to convert."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, newlines = 0, 0
    with open(path, "rb") as f:
        head = f.read(2)
        if head in _UTF16_BOMS:
            return _reencode_hint(path, 0, 1, "utf-16", "starts with a UTF-16 byte-order mark")
        f.seek(0)
        while chunk := f.read(SCAN_CHUNK):
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                # e.start counts from the bytes the decoder held back from the previous chunk.
                at = offset - pending + e.start
                local = at - offset  # negative when the bad sequence began in the previous chunk (no newline there)
                line = newlines + (chunk[:local].count(b"\n") if local > 0 else 0) + 1
                f.seek(at)
                bad = f.read(1)[0]
                return _reencode_hint(path, at, line, guess_encoding(path), f"byte 0x{bad:02x} is not valid UTF-8")
            offset += len(chunk)
            newlines += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return _reencode_hint(path, offset - 1, newlines + 1, guess_encoding(path), "the file ends inside a character")
    return None


def guess_encoding(path: Path) -> str:
    """A cheap guess for text that is not UTF-8: Windows-1252 when it decodes as such (most Western exports), else latin-1."""
    with open(path, "rb") as f:
        data = f.read(GUESS_BYTES)
    try:
        data.decode("cp1252")
    except UnicodeDecodeError:
        return "latin1"
    return "cp1252"


def _reencode_hint(path: Path, offset: int, line: int, encoding: str, what: str) -> str:
    target = path.with_name(f"{path.stem}.utf8{path.suffix}")
    return (
        f"not UTF-8 at byte offset {offset} (line {line}): {what}; it looks like {encoding}: re-save it as UTF-8 "
        f"(iconv -f {encoding} -t utf-8 {path} > {target})"
    )


def is_empty(path: Path, fmt: str) -> bool:
    """No data rows: nothing but whitespace, a CSV header alone, or an empty JSON array."""
    rows = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows += 1
                if fmt != "csv" or rows > 1:
                    break
    if fmt == "csv":
        return rows < 2
    if rows and fmt == "json":
        with open(path, encoding="utf-8") as f:
            start = f.read(SCAN_CHUNK).strip()
        return "".join(start.split()) == "[]"
    return rows == 0


def json_problem(path: Path) -> str | None:
    """The first line that is not valid JSON (JSON lines), or the line/column of the error in a JSON document."""
    with open(path, encoding="utf-8") as f:
        first = f.read(1)
        while first.isspace():
            first = f.read(1)
    if first == "[":
        with open(path, encoding="utf-8") as f:
            try:
                rows = json.load(f)
            except json.JSONDecodeError as e:
                return f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
        return None if bad is None else f"array item {bad} is {type(rows[bad]).__name__}, not a JSON object (one row)"
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                if lineno == 1 and first == "{" and _is_json_document(path):
                    return "the file is one JSON object, not JSON lines or an array of rows (one object per line)"
                return f"line {lineno} is not valid JSON ({e.msg} at column {e.colno}): {_clip(line)}"
            if not isinstance(row, dict):
                return f"line {lineno} is a JSON {type(row).__name__}, not an object (one row per line): {_clip(line)}"
    return None


def _is_json_document(path: Path) -> bool:
    with open(path, encoding="utf-8") as f:
        try:
            json.load(f)
        except json.JSONDecodeError:
            return False
    return True


CLIP = 60  # characters of a bad line quoted in a message


def _clip(line: str) -> str:
    line = line.strip()
    return repr(line if len(line) <= CLIP else line[:CLIP] + "…")
