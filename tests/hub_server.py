"""A small Hugging Face Hub-compatible HTTP server for tests (stdlib only).

The real `huggingface_hub`, `transformers` and `datasets` libraries can be pointed at it with
`HF_ENDPOINT` (see `HubServer.env()`), so upload/download code paths run end to end without the
real Hub. It implements the part of the Hub protocol those clients use: repo creation and info,
tree / paths-info listings, preupload, NDJSON commits (regular + LFS files, deletions, copies,
pull requests, `parent_commit`), the git-LFS batch API with basic transfers, refs, branches, tags,
and `resolve` downloads (HEAD + GET, ranges, `X-Repo-Commit` / `ETag` / `X-Linked-*` headers and
`X-Error-Code` on 404s).

Storage is a content-addressed object store plus one JSON manifest per commit; branches, tags and
PR refs are pointers to those manifests. A commit either writes its manifest and moves the ref, or
changes nothing.

Typical use in a test::

    def test_upload(hub_server, tmp_path):
        sha = hub_server.seed_repo("org/tiny", {"config.json": b"{}"})
        env = {**os.environ, **hub_server.env()}
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        assert ("POST", "/api/models/org/tiny/commit/main") in hub_server.requests

Fault injection (`server.faults`) answers chosen requests with an error status or drops the
connection, to test retry and failure handling.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import mimetypes
import os
import re
import secrets
import shutil
import socket
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest


TEST_TOKEN = "hf_test_hftoolkit_write_0123456789abcdef"
TEST_READ_TOKEN = "hf_test_hftoolkit_read_0123456789abcdef"
TEST_USER = "test-user"

# Plural URL segment -> repo type, and the prefix used in resolve / git URLs for each type.
_URL_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_RESOLVE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}

# Same threshold as the Hub: bigger files must go through LFS even if they look like text.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

# The Hub seeds every new repo with a `.gitattributes`; its patterns decide which files are LFS.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gguf", "*.gz", "*.h5", "*.joblib",
        "*.lz4", "*.mds", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot",
        "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors",
        "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
        "*.png", "*.jpg", "*.jpeg", "*.gif", "*.webp", "*.mp3", "*.wav", "*.flac", "*.ogg", "*.mp4",
    )
)

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_SHORT_COMMIT_RE = re.compile(r"^[0-9a-f]{7,39}$")
_REPO_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_PR_REF_RE = re.compile(r"^refs/pr/(\d+)$")

# Sub-resources that may follow a repo id in `/api/{type}s/...` URLs. Needed to tell the legacy
# single-segment ids ("gpt2/tree/main") apart from "namespace/name" ids.
_API_SUBRESOURCES = {
    "revision", "tree", "paths-info", "preupload", "commit", "commits", "refs", "branch", "tag",
    "settings", "discussions", "parquet", "treesize", "lfs-files", "resolve",
}


class HubError(Exception):
    """An HTTP error answered the way the Hub does: JSON `{"error": ...}` plus `X-Error-*` headers."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None,
                 extra: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})  # more JSON fields next to "error"


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_sha1(data: bytes) -> str:
    """The oid git gives a blob; the Hub uses it as ETag of regular (non-LFS) files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _validate_repo_path(path: str) -> str:
    # The Hub refuses these; accepting them here would hide client bugs.
    if not path or path.startswith("/") or path.endswith("/") or "\\" in path:
        raise HubError(400, f"Invalid path in repo: {path!r}")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts) or parts[0] == ".git":
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def _lfs_patterns(gitattributes: str) -> list[str]:
    patterns = []
    for line in gitattributes.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#") and "filter=lfs" in fields[1:]:
            patterns.append(fields[0])
    return patterns


def _matches_lfs(path: str, patterns: list[str]) -> bool:
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns)


def _parse_front_matter(text: str) -> dict | None:
    """YAML metadata block of a README (the Hub's `cardData`), or None."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.DOTALL)
    if match is None:
        return None
    try:
        import yaml
    except ImportError:  # pyyaml is a dependency of the project, but keep the server importable without it
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------


@dataclass
class _Op:
    """One commit operation, already decoded (from NDJSON or from `seed_repo`)."""

    kind: str  # "file" | "lfsFile" | "deletedFile" | "deletedFolder" | "copyFile"
    path: str
    data: bytes | None = None
    oid: str | None = None
    size: int | None = None
    src_path: str | None = None
    src_revision: str | None = None


class HubStorage:
    """Repos, commits and objects on disk under `root`.

    - `objects/<sha256>`: every file content ever stored (regular and LFS), content-addressed.
    - `repos/<type>s/<namespace>/<name>/repo.json`: visibility and creation date.
    - `.../commits/<sha>.json`: full snapshot (path -> sha256, size, lfs flag, git oid) + metadata.
    - `.../refs.json`: branches, tags, PR refs -> commit sha. Replaced atomically, last, so a commit
      is visible only once everything it points to is on disk.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self._commit_cache: dict[tuple[str, str, str], dict] = {}

    # objects ---------------------------------------------------------------------------------

    def put_object(self, data: bytes) -> str:
        oid = hashlib.sha256(data).hexdigest()
        path = self.objects / oid
        if not path.exists():
            _atomic_write(path, data)
        return oid

    def has_object(self, oid: str) -> bool:
        return bool(_SHA256_RE.match(oid)) and (self.objects / oid).is_file()

    def object_path(self, oid: str) -> Path:
        return self.objects / oid

    def read_object(self, oid: str) -> bytes:
        return (self.objects / oid).read_bytes()

    # repos -----------------------------------------------------------------------------------

    def repo_dir(self, repo_type: str, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_type}s" / repo_id

    def meta(self, repo_type: str, repo_id: str) -> dict | None:
        try:
            return json.loads((self.repo_dir(repo_type, repo_id) / "repo.json").read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None

    def set_meta(self, repo_type: str, repo_id: str, meta: dict) -> None:
        _atomic_write(self.repo_dir(repo_type, repo_id) / "repo.json", json.dumps(meta).encode())

    def list_repos(self, repo_type: str) -> list[str]:
        base = self.root / "repos" / f"{repo_type}s"
        return sorted(str(p.parent.relative_to(base)) for p in base.glob("**/repo.json"))

    def create_repo(self, repo_type: str, repo_id: str, private: bool, author: str) -> str:
        with self.lock:
            if self.meta(repo_type, repo_id) is not None:
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}")
            meta = {"_id": secrets.token_hex(12), "id": repo_id, "type": repo_type, "private": bool(private),
                    "createdAt": _now_iso()}
            self.put_object(DEFAULT_GITATTRIBUTES.encode())
            files = {".gitattributes": self._entry(DEFAULT_GITATTRIBUTES.encode(), lfs=False)}
            sha = self._write_commit(repo_type, repo_id, files, parents=[], title="initial commit", message="",
                                     author=author)
            _atomic_write(self.repo_dir(repo_type, repo_id) / "refs.json",
                          json.dumps({"branches": {"main": sha}, "tags": {}, "pulls": {}, "converts": {},
                                      "next_num": 1}).encode())
            # repo.json last: a repo "exists" only once it has a main branch
            self.set_meta(repo_type, repo_id, meta)
            return sha

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            shutil.rmtree(self.repo_dir(repo_type, repo_id), ignore_errors=True)
            self._commit_cache = {k: v for k, v in self._commit_cache.items() if k[:2] != (repo_type, repo_id)}

    def refs(self, repo_type: str, repo_id: str) -> dict:
        return json.loads((self.repo_dir(repo_type, repo_id) / "refs.json").read_text())

    def set_refs(self, repo_type: str, repo_id: str, refs: dict) -> None:
        _atomic_write(self.repo_dir(repo_type, repo_id) / "refs.json", json.dumps(refs).encode())

    def commit(self, repo_type: str, repo_id: str, sha: str) -> dict:
        key = (repo_type, repo_id, sha)
        if key not in self._commit_cache:  # commits are immutable once written
            path = self.repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json"
            self._commit_cache[key] = json.loads(path.read_text())
        return self._commit_cache[key]

    def has_commit(self, repo_type: str, repo_id: str, sha: str) -> bool:
        return (self.repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json").is_file()

    def resolve(self, repo_type: str, repo_id: str, revision: str) -> str | None:
        """Commit sha for a branch, tag, `refs/...` name or (possibly abbreviated) commit sha."""
        refs = self.refs(repo_type, repo_id)
        rev = revision
        if rev.startswith("refs/heads/"):
            return refs["branches"].get(rev[len("refs/heads/"):])
        if rev.startswith("refs/tags/"):
            return refs["tags"].get(rev[len("refs/tags/"):])
        if rev.startswith("refs/convert/"):
            return refs["converts"].get(rev[len("refs/convert/"):])
        match = _PR_REF_RE.match(rev)
        if match:
            return refs["pulls"].get(match.group(1))
        if rev in refs["branches"]:
            return refs["branches"][rev]
        if rev in refs["tags"]:
            return refs["tags"][rev]
        if _COMMIT_RE.match(rev):
            return rev if self.has_commit(repo_type, repo_id, rev) else None
        if _SHORT_COMMIT_RE.match(rev):
            commits_dir = self.repo_dir(repo_type, repo_id) / "commits"
            found = [p.stem for p in commits_dir.glob(f"{rev}*.json")]
            return found[0] if len(found) == 1 else None
        return None

    @staticmethod
    def _entry(data: bytes, lfs: bool) -> dict:
        sha256 = hashlib.sha256(data).hexdigest()
        oid = git_blob_sha1(lfs_pointer(sha256, len(data))) if lfs else git_blob_sha1(data)
        return {"sha256": sha256, "size": len(data), "lfs": lfs, "oid": oid}

    def _write_commit(self, repo_type: str, repo_id: str, files: dict, parents: list[str], title: str,
                      message: str, author: str) -> str:
        for path, entry in files.items():
            if not (self.objects / entry["sha256"]).exists():
                raise HubError(500, f"object missing for {path}")  # programming error, never a client one
        body = {"parents": parents, "title": title, "message": message, "date": _now_iso(),
                "authors": [author], "files": files}
        sha = hashlib.sha1(json.dumps(body, sort_keys=True).encode() + secrets.token_bytes(8)).hexdigest()
        body["id"] = sha
        _atomic_write(self.repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json",
                      json.dumps(body, sort_keys=True).encode())
        return sha

    def lfs_patterns_at(self, repo_type: str, repo_id: str, sha: str | None) -> list[str]:
        if sha is not None:
            entry = self.commit(repo_type, repo_id, sha)["files"].get(".gitattributes")
            if entry is not None:
                return _lfs_patterns(self.read_object(entry["sha256"]).decode("utf-8", "replace"))
        return _lfs_patterns(DEFAULT_GITATTRIBUTES)

    def upload_mode(self, path: str, size: int, sample: bytes, patterns: list[str]) -> str:
        if size > LFS_SIZE_THRESHOLD or b"\0" in sample or _matches_lfs(path, patterns):
            return "lfs"
        return "regular"

    def apply_commit(
        self,
        repo_type: str,
        repo_id: str,
        revision: str,
        ops: list[_Op],
        *,
        title: str,
        message: str = "",
        author: str = TEST_USER,
        parent_commit: str | None = None,
        create_pr: bool = False,
        create_branch: bool = False,
    ) -> tuple[str, int | None]:
        """Create a commit on `revision` (a branch or `refs/pr/N`); returns (sha, pr number or None).

        Everything is validated and every object is on disk before the ref moves, so a failing
        commit leaves the repo exactly as it was.
        """
        with self.lock:
            refs = self.refs(repo_type, repo_id)
            pr_num: int | None = None
            if create_pr:
                base = self.resolve(repo_type, repo_id, revision)
                if base is None:
                    raise HubError(404, f"Revision Not Found: {revision}", code="RevisionNotFound")
                if parent_commit is not None:
                    base = self._check_parent(repo_type, repo_id, parent_commit)
                target = ("pulls", str(refs["next_num"]))
                pr_num = refs["next_num"]
            else:
                target = self._branch_target(refs, revision, create_branch)
                if target is None:
                    if self.resolve(repo_type, repo_id, revision) is not None:
                        raise HubError(400, f"Invalid rev id: {revision} is not a branch")
                    raise HubError(404, f"Revision Not Found: {revision}", code="RevisionNotFound")
                base = refs[target[0]].get(target[1]) or refs["branches"]["main"]
                if parent_commit is not None and not base.startswith(parent_commit.lower()):
                    raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(self.commit(repo_type, repo_id, base)["files"])
            for op in ops:
                self._apply_op(repo_type, repo_id, files, op)
            self._check_no_file_dir_conflict(files)
            sha = self._write_commit(repo_type, repo_id, files, parents=[base], title=title, message=message,
                                     author=author)
            refs[target[0]][target[1]] = sha
            if pr_num is not None:
                refs["next_num"] = pr_num + 1
            self.set_refs(repo_type, repo_id, refs)
            return sha, pr_num

    def _check_parent(self, repo_type: str, repo_id: str, parent_commit: str) -> str:
        sha = self.resolve(repo_type, repo_id, parent_commit.lower())
        if sha is None:
            raise HubError(404, f"Parent commit not found: {parent_commit}", code="RevisionNotFound")
        return sha

    @staticmethod
    def _branch_target(refs: dict, revision: str, create_branch: bool) -> tuple[str, str] | None:
        name = revision[len("refs/heads/"):] if revision.startswith("refs/heads/") else revision
        match = _PR_REF_RE.match(revision)
        if match:
            return ("pulls", match.group(1)) if match.group(1) in refs["pulls"] else None
        if name in refs["branches"] or (create_branch and not _COMMIT_RE.match(name)):
            return ("branches", name)
        return None

    def _apply_op(self, repo_type: str, repo_id: str, files: dict, op: _Op) -> None:
        if op.kind in ("file", "lfsFile", "copyFile"):
            _validate_repo_path(op.path)
        if op.kind == "file":
            assert op.data is not None
            self.put_object(op.data)
            files[op.path] = self._entry(op.data, lfs=False)
        elif op.kind == "lfsFile":
            oid = (op.oid or "").lower()
            if not self.has_object(oid):
                raise HubError(422, f"Your push was rejected because an LFS pointer pointed to a file that does"
                                    f" not exist: {op.path} (oid {oid})")
            size = (self.objects / oid).stat().st_size
            if op.size is not None and op.size != size:
                raise HubError(422, f"LFS object {oid} has size {size}, commit says {op.size} ({op.path})")
            files[op.path] = {"sha256": oid, "size": size, "lfs": True,
                              "oid": git_blob_sha1(lfs_pointer(oid, size))}
        elif op.kind == "deletedFile":
            if op.path not in files:
                raise HubError(404, f"A file with this name doesn't exist: {op.path}", code="EntryNotFound")
            del files[op.path]
        elif op.kind == "deletedFolder":
            prefix = op.path.strip("/")
            doomed = [p for p in files if prefix == "" or p.startswith(prefix + "/")]
            if not doomed:
                raise HubError(404, f"A folder with this name doesn't exist: {op.path}", code="EntryNotFound")
            for p in doomed:
                del files[p]
        elif op.kind == "copyFile":
            src_files = files
            if op.src_revision:
                src_sha = self.resolve(repo_type, repo_id, op.src_revision)
                if src_sha is None:
                    raise HubError(404, f"Revision Not Found: {op.src_revision}", code="RevisionNotFound")
                src_files = self.commit(repo_type, repo_id, src_sha)["files"]
            if op.src_path not in src_files:
                raise HubError(404, f"A file with this name doesn't exist: {op.src_path}", code="EntryNotFound")
            files[op.path] = dict(src_files[op.src_path])
        else:
            raise HubError(400, f"Unknown commit operation: {op.kind}")

    @staticmethod
    def _check_no_file_dir_conflict(files: dict) -> None:
        for path in files:
            for parent in PurePosixPath(path).parents:
                if str(parent) != "." and str(parent) in files:
                    raise HubError(400, f"Cannot have both a file and a folder named {parent}")

    def last_commit(self, repo_type: str, repo_id: str, head: str, path: str) -> dict:
        """First-parent history walk: the newest commit that changed `path` (file or folder)."""

        def signature(sha: str):
            files = self.commit(repo_type, repo_id, sha)["files"]
            if path in files:
                return files[path]["oid"]
            return tuple(sorted((p, e["oid"]) for p, e in files.items() if p.startswith(path + "/")))

        sha = head
        while True:
            commit = self.commit(repo_type, repo_id, sha)
            if not commit["parents"] or signature(commit["parents"][0]) != signature(sha):
                return commit
            sha = commit["parents"][0]


# --------------------------------------------------------------------------------------------
# Fault injection and request log
# --------------------------------------------------------------------------------------------


@dataclass
class _FaultRule:
    kind: str  # "fail" | "drop" | "delay"
    substring: str
    method: str | None
    status: int = 503
    times: int | None = None  # None = forever
    seconds: float = 0.0
    body: dict | None = None

    def matches(self, method: str, path: str) -> bool:
        return self.substring in path and (self.method is None or self.method == method)


class Faults:
    """Makes chosen requests fail. `path_substring` is matched against the raw request path
    (as sent, percent-encoding included, without the query string)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[_FaultRule] = []
        self.triggered: list[tuple[str, str, str]] = []  # (kind, method, path)

    def fail_next(self, path_substring: str, status: int = 503, times: int = 1, *, method: str | None = None,
                  error: str | None = None) -> None:
        """Answer the next `times` matching requests with `status`, then behave normally."""
        body = {"error": error or f"Injected failure ({status})"}
        with self._lock:
            self._rules.append(_FaultRule("fail", path_substring, method, status=status, times=times, body=body))

    def drop_connections(self, path_substring: str, *, method: str | None = None, times: int | None = None) -> None:
        """Close the socket without answering matching requests (forever by default, until `clear()`)."""
        with self._lock:
            self._rules.append(_FaultRule("drop", path_substring, method, times=times))

    def delay(self, path_substring: str, seconds: float, *, method: str | None = None,
              times: int | None = None) -> None:
        """Sleep before answering matching requests (to exercise client timeouts)."""
        with self._lock:
            self._rules.append(_FaultRule("delay", path_substring, method, times=times, seconds=seconds))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def pending(self) -> list[_FaultRule]:
        with self._lock:
            return list(self._rules)

    def _take(self, method: str, path: str) -> list[_FaultRule]:
        """Rules that apply to this request (consuming one use of counted rules)."""
        taken = []
        with self._lock:
            for rule in list(self._rules):
                if not rule.matches(method, path):
                    continue
                if rule.kind != "delay" and any(r.kind != "delay" for r in taken):
                    continue  # one failure per request; the next rule waits for the next request
                taken.append(rule)
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        self._rules.remove(rule)
                self.triggered.append((rule.kind, method, path))
        return taken


@dataclass
class RequestRecord:
    method: str
    path: str  # raw path, without query string
    query: dict[str, list[str]]
    authorization: str | None
    status: int | None = None  # None when the connection was dropped


# --------------------------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------------------------


@dataclass
class _Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    file: Path | None = None  # stream [start, end) of this file instead of `body`
    start: int = 0
    end: int = 0


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None,
          content_type: str = "application/json") -> _Response:
    return _Response(status, json.dumps(data).encode(), {"Content-Type": content_type, **(headers or {})})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the Hub; every answer carries Content-Length
    server_version = "hftoolkit-test-hub/1.0"
    timeout = 60  # idle keep-alive connections of finished clients must not pin threads forever
    hub: "HubServer"  # set on the subclass built by HubServer.start()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the request log lives in HubServer.log; stderr noise would only clutter test output

    def setup(self) -> None:
        super().setup()
        with self.hub._log_lock:
            self.hub._connections.add(self.connection)

    def finish(self) -> None:
        with self.hub._log_lock:
            self.hub._connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # httpx streams file objects (LFS PUTs) with chunked encoding when it can't size them
            chunks = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self, method: str) -> None:
        hub = self.hub
        split = urlsplit(self.path)
        raw_path = split.path
        query = parse_qs(split.query, keep_blank_values=True)
        record = RequestRecord(method, raw_path, query, self.headers.get("Authorization"))
        with hub._log_lock:
            hub.log.append(record)
        try:
            body = self._read_body()
        except ValueError:  # malformed Content-Length / chunk sizes: the stream can't be trusted anymore
            self.close_connection = True
            self._send(method, _json({"error": "Malformed request body"}, 400), record)
            return

        rules = hub.faults._take(method, raw_path)
        for rule in rules:
            if rule.kind == "delay":
                time.sleep(rule.seconds)
        for rule in rules:
            if rule.kind == "drop":
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            if rule.kind == "fail":
                self._send(method, _json(rule.body, rule.status), record)
                return

        try:
            response = hub._dispatch(method, raw_path, query, self.headers, body)
        except HubError as err:
            headers = dict(err.headers)
            if err.code:
                headers["X-Error-Code"] = err.code
            headers["X-Error-Message"] = err.message.encode("ascii", "replace").decode()[:500]
            response = _json({"error": err.message, **err.extra}, err.status, headers)
        except Exception:  # a server bug: answer 500 and keep it for the test to assert on
            tb = traceback.format_exc()
            hub.errors.append(f"{method} {self.path}\n{tb}")
            response = _json({"error": "Internal server error", "traceback": tb}, 500)
        self._send(method, response, record)

    def _send(self, method: str, response: _Response, record: RequestRecord) -> None:
        record.status = response.status
        length = (response.end - response.start) if response.file is not None else len(response.body)
        try:
            self.send_response(response.status)
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if method == "HEAD":
                return
            if response.file is not None:
                with open(response.file, "rb") as f:
                    f.seek(response.start)
                    remaining = length
                    while remaining > 0:
                        chunk = f.read(min(1 << 20, remaining))
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        remaining -= len(chunk)
            else:
                self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class HubServer:
    """Hub-compatible server on 127.0.0.1 (random port) storing everything under `root`.

    `token` is the write token; `read_tokens` may read private repos but not write. Requests
    without a valid token are anonymous: they can read public repos only.
    """

    def __init__(self, root: Path, token: str = TEST_TOKEN, *, user: str = TEST_USER,
                 read_tokens: tuple[str, ...] = ()):
        self.root = Path(root)
        self.token = token
        self.user = user
        self.read_tokens = tuple(read_tokens)
        self.storage = HubStorage(self.root / "storage")
        self.client_home = self.root / "client-home"
        self.faults = Faults()
        self.log: list[RequestRecord] = []
        self.errors: list[str] = []  # tracebacks of unexpected server exceptions (should stay empty)
        self._log_lock = threading.Lock()
        # open client sockets: keep-alive connections would otherwise still be served after stop()
        self._connections: set[socket.socket] = set()
        self._signing_key = secrets.token_bytes(32)
        self._httpd: ThreadingHTTPServer | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None

    # lifecycle ---------------------------------------------------------------------------------

    def start(self) -> "HubServer":
        handler = type("BoundHubHandler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="test-hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        with self._log_lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._port is not None, "server not started"
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, raw path) of every request received so far, in order."""
        with self._log_lock:
            return [(r.method, r.path) for r in self.log]

    def clear_log(self) -> None:
        with self._log_lock:
            self.log.clear()

    def env(self, token: str | bool | None = True, home: Path | None = None) -> dict[str, str]:
        """Environment for a client subprocess: `{**os.environ, **server.env()}`.

        `token`: True (default) = the server's write token, a string = that token, None/False = an
        anonymous client (HF_TOKEN set empty so that an outer one cannot leak in).
        Caches live under `home` (default: `<root>/client-home`), never in the real user cache.
        """
        home = Path(home) if home is not None else self.client_home
        token_value = self.token if token is True else (token or "")
        no_proxy = ",".join(x for x in ("127.0.0.1", "localhost", os.environ.get("NO_PROXY", "")) if x)
        return {
            "HF_ENDPOINT": self.url,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
            "HF_TOKEN": token_value,
            "HUGGING_FACE_HUB_TOKEN": token_value,
            "HF_OIDC_RESOURCE": "",
            "HUGGINGFACE_CO_STAGING": "0",
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(home / "hub"),
            "HUGGINGFACE_HUB_CACHE": str(home / "hub"),
            "HF_ASSETS_CACHE": str(home / "assets"),
            "HF_XET_CACHE": str(home / "xet"),
            "HF_MODULES_CACHE": str(home / "modules"),
            "HF_DATASETS_CACHE": str(home / "datasets"),
            "HF_TOKEN_PATH": str(home / "token"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "HF_HUB_DISABLE_SYMLINKS_WARNING": "1",
            "HF_HUB_DISABLE_EXPERIMENTAL_WARNING": "1",
            "HF_HUB_ETAG_TIMEOUT": "5",
            "HF_HUB_DOWNLOAD_TIMEOUT": "10",
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        }

    # direct access for tests (no HTTP) ------------------------------------------------------------

    def seed_repo(self, repo_id: str, files: Mapping[str, bytes | str | Path], repo_type: str = "model",
                  branch: str = "main", *, private: bool = False, message: str = "seed") -> str:
        """Create the repo if needed and commit `files` on top of `branch` (created from main if
        missing). Whether a file is LFS is decided as for uploads. Returns the new commit sha."""
        storage = self.storage
        with storage.lock:
            if storage.meta(repo_type, repo_id) is None:
                storage.create_repo(repo_type, repo_id, private=private, author=self.user)
            head = storage.resolve(repo_type, repo_id, branch)
            patterns = storage.lfs_patterns_at(repo_type, repo_id, head)
            ops = []
            for path, content in files.items():
                data = Path(content).read_bytes() if isinstance(content, Path) else (
                    content.encode() if isinstance(content, str) else bytes(content))
                if storage.upload_mode(path, len(data), data[:512], patterns) == "lfs":
                    ops.append(_Op("lfsFile", path, oid=storage.put_object(data), size=len(data)))
                else:
                    ops.append(_Op("file", path, data=data))
            sha, _ = storage.apply_commit(repo_type, repo_id, branch, ops, title=message, author=self.user,
                                          create_branch=True)
            return sha

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str | None:
        """Commit sha `revision` points to, or None (missing repo or revision)."""
        if self.storage.meta(repo_type, repo_id) is None:
            return None
        return self.storage.resolve(repo_type, repo_id, revision)

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """All files of a revision with their content."""
        sha = self.head(repo_id, revision, repo_type)
        if sha is None:
            raise KeyError(f"{repo_type} {repo_id}@{revision} not found")
        entries = self.storage.commit(repo_type, repo_id, sha)["files"]
        return {p: self.storage.read_object(e["sha256"]) for p, e in sorted(entries.items())}

    def lfs_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> set[str]:
        sha = self.head(repo_id, revision, repo_type)
        assert sha is not None
        return {p for p, e in self.storage.commit(repo_type, repo_id, sha)["files"].items() if e["lfs"]}

    def refs(self, repo_id: str, repo_type: str = "model") -> dict:
        return self.storage.refs(repo_type, repo_id)

    # auth ------------------------------------------------------------------------------------

    def _auth(self, headers: Mapping[str, str]) -> str:
        value = headers.get("Authorization")
        if not value:
            return "anonymous"
        scheme, _, credential = value.partition(" ")
        if scheme.lower() != "bearer":
            return "invalid"
        if hmac.compare_digest(credential.strip(), self.token):
            return "write"
        if any(hmac.compare_digest(credential.strip(), t) for t in self.read_tokens):
            return "read"
        return "invalid"

    @staticmethod
    def _require_write(auth: str) -> None:
        if auth == "anonymous":
            raise HubError(401, "Invalid username or password.")
        if auth == "invalid":
            raise HubError(403, "Invalid credentials in Authorization header")
        if auth == "read":
            raise HubError(403, "You don't have the rights to write with this token (read-only).")

    def _readable_meta(self, repo_type: str, repo_id: str, auth: str) -> dict:
        parts = repo_id.split("/")
        if len(parts) > 2 or not all(_REPO_NAME_RE.match(p) and ".." not in p for p in parts):
            raise HubError(404, "Repository not found", code="RepoNotFound")  # also keeps ids inside root
        meta = self.storage.meta(repo_type, repo_id)
        # Private repos are indistinguishable from missing ones without a token, as on the Hub.
        if meta is None or (meta["private"] and auth not in ("read", "write")):
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return meta

    def _resolve_rev(self, repo_type: str, repo_id: str, revision: str) -> str:
        sha = self.storage.resolve(repo_type, repo_id, revision)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return sha

    def _sign(self, oid: str, size: int, expires: int) -> str:
        return hmac.new(self._signing_key, f"{oid}:{size}:{expires}".encode(), hashlib.sha256).hexdigest()

    # routing ---------------------------------------------------------------------------------

    def _dispatch(self, method: str, raw_path: str, query: dict[str, list[str]], headers: Mapping[str, str],
                  body: bytes) -> _Response:
        segs = [unquote(s) for s in raw_path.split("/")[1:]]
        if segs and segs[-1] == "" and len(segs) > 1:
            segs = segs[:-1]
        auth = self._auth(headers)

        if segs[:1] == ["api"]:
            return self._dispatch_api(method, segs[1:], query, headers, body, auth)
        if segs[:1] == ["lfs-upload"] and len(segs) == 2 and method == "PUT":
            return self._lfs_upload(segs[1], query, body, auth)

        # Git-LFS: /[datasets/]{repo_id}.git/info/lfs/objects/(batch|verify)
        repo_type, rest = ("model", segs)
        if segs and segs[0] in ("datasets", "spaces"):
            repo_type, rest = _URL_TYPES[segs[0]], segs[1:]
        for i, seg in enumerate(rest[:2]):
            if seg.endswith(".git") and rest[i + 1:i + 4] == ["info", "lfs", "objects"] and len(rest) == i + 5:
                repo_id = "/".join(rest[:i] + [seg[:-len(".git")]])
                action = rest[i + 4]
                if method == "POST" and action == "batch":
                    return self._lfs_batch(repo_type, repo_id, body, auth)
                if method == "POST" and action == "verify":
                    return self._lfs_verify(repo_type, repo_id, body, auth)
        # Downloads: /[datasets/]{repo_id}/resolve/{revision}/{path}
        for i in (1, 2):
            if len(rest) > i + 1 and rest[i] == "resolve" and method in ("GET", "HEAD"):
                repo_id = "/".join(rest[:i])
                revision, path_segs = self._split_revision(rest[i + 1:])
                return self._resolve_file(method, repo_type, repo_id, revision, "/".join(path_segs), headers, auth)
        raise HubError(404, f"Not found: {method} {raw_path}")

    @staticmethod
    def _split_revision(segs: list[str]) -> tuple[str, list[str]]:
        # Clients percent-encode the revision into one segment, but some send `refs/pr/1` as is.
        if len(segs) >= 3 and segs[0] == "refs" and segs[1] in ("pr", "convert", "heads", "tags"):
            return "/".join(segs[:3]), segs[3:]
        return segs[0], segs[1:]

    def _split_repo_id(self, repo_type: str, rest: list[str]) -> tuple[str, list[str]]:
        if len(rest) >= 2 and (rest[1] not in _API_SUBRESOURCES
                               or self.storage.meta(repo_type, "/".join(rest[:2])) is not None):
            return "/".join(rest[:2]), rest[2:]
        return rest[0], rest[1:]

    def _dispatch_api(self, method: str, segs: list[str], query: dict, headers: Mapping[str, str], body: bytes,
                      auth: str) -> _Response:
        if segs == ["whoami-v2"] and method == "GET":
            return self._whoami(auth)
        if segs == ["repos", "create"] and method == "POST":
            return self._create_repo(body, auth)
        if segs == ["repos", "delete"] and method == "DELETE":
            return self._delete_repo(body, auth)
        if segs == ["validate-yaml"] and method == "POST":
            return self._validate_yaml(body)
        if len(segs) == 1 and segs[0] in _URL_TYPES and method == "GET":
            return self._list_repos(_URL_TYPES[segs[0]], query, auth)
        if len(segs) < 2 or segs[0] not in _URL_TYPES:
            raise HubError(404, f"Not found: /api/{'/'.join(segs)}")

        repo_type = _URL_TYPES[segs[0]]
        repo_id, tail = self._split_repo_id(repo_type, segs[1:])
        action = tail[0] if tail else None

        if action is None and method == "GET":
            return self._repo_info(repo_type, repo_id, "main", query, auth)
        if action == "revision" and len(tail) >= 2 and method == "GET":
            return self._repo_info(repo_type, repo_id, "/".join(tail[1:]), query, auth)
        if action == "tree" and len(tail) >= 2 and method == "GET":
            revision, path_segs = self._split_revision(tail[1:])
            return self._tree(repo_type, repo_id, revision, "/".join(path_segs), query, auth)
        if action == "paths-info" and len(tail) >= 2 and method == "POST":
            return self._paths_info(repo_type, repo_id, "/".join(tail[1:]), headers, body, auth)
        if action == "preupload" and len(tail) >= 2 and method == "POST":
            return self._preupload(repo_type, repo_id, "/".join(tail[1:]), query, body, auth)
        if action == "commit" and len(tail) >= 2 and method == "POST":
            return self._commit(repo_type, repo_id, "/".join(tail[1:]), query, body, auth)
        if action == "commits" and len(tail) >= 2 and method == "GET":
            return self._list_commits(repo_type, repo_id, "/".join(tail[1:]), auth)
        if action == "refs" and len(tail) == 1 and method == "GET":
            return self._refs(repo_type, repo_id, query, auth)
        if action == "branch" and len(tail) >= 2 and method in ("POST", "DELETE"):
            return self._branch(method, repo_type, repo_id, "/".join(tail[1:]), body, auth)
        if action == "tag" and len(tail) >= 2 and method in ("POST", "DELETE"):
            return self._tag(method, repo_type, repo_id, "/".join(tail[1:]), body, auth)
        if action == "settings" and len(tail) == 1 and method == "PUT":
            return self._settings(repo_type, repo_id, body, auth)
        raise HubError(404, f"Not found: {method} /api/{'/'.join(segs)}")

    # endpoints: account and repos --------------------------------------------------------------

    def _whoami(self, auth: str) -> _Response:
        if auth not in ("read", "write"):
            raise HubError(401, "Invalid credentials in Authorization header")
        return _json({
            "type": "user", "id": "0" * 24, "name": self.user, "fullname": "Test User",
            "email": f"{self.user}@example.com", "emailVerified": True, "isPro": False, "canPay": False,
            "avatarUrl": "", "orgs": [{"type": "org", "name": "org", "fullname": "Test Org", "roleInOrg": "admin"}],
            "auth": {"type": "access_token",
                     "accessToken": {"displayName": "test-token", "role": auth,
                                     "createdAt": "2024-01-01T00:00:00.000Z"}},
        })

    @staticmethod
    def _json_body(body: bytes) -> dict:
        try:
            data = json.loads(body or b"{}")
        except ValueError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from None
        if not isinstance(data, dict):
            raise HubError(400, "JSON body must be an object")
        return data

    def _repo_id_from_payload(self, data: dict) -> tuple[str, str]:
        repo_type = data.get("type") or "model"
        if repo_type not in _RESOLVE_PREFIX:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        name, org = data.get("name"), data.get("organization")
        for part in (name, org):
            if part is not None and (not isinstance(part, str) or not _REPO_NAME_RE.match(part) or "--" in part
                                     or ".." in part or part.endswith(".git")):
                raise HubError(400, f"Invalid repo name: {part!r}")
        if not name:
            raise HubError(400, "Missing repo name")
        return repo_type, f"{org or self.user}/{name}"

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.url}/{_RESOLVE_PREFIX[repo_type]}{repo_id}"

    def _create_repo(self, body: bytes, auth: str) -> _Response:
        self._require_write(auth)
        data = self._json_body(body)
        repo_type, repo_id = self._repo_id_from_payload(data)
        private = data.get("private") is True or data.get("visibility") == "private"
        try:
            self.storage.create_repo(repo_type, repo_id, private=private, author=self.user)
        except HubError as err:
            # huggingface_hub's `exist_ok=True` swallows the 409 and still reads "url" from the body
            err.extra["url"] = self._repo_url(repo_type, repo_id)
            raise
        return _json({"url": self._repo_url(repo_type, repo_id), "name": repo_id, "id": repo_id})

    def _delete_repo(self, body: bytes, auth: str) -> _Response:
        self._require_write(auth)
        repo_type, repo_id = self._repo_id_from_payload(self._json_body(body))
        if self.storage.meta(repo_type, repo_id) is None:
            raise HubError(404, "Repository not found", code="RepoNotFound")
        self.storage.delete_repo(repo_type, repo_id)
        return _json({})

    def _settings(self, repo_type: str, repo_id: str, body: bytes, auth: str) -> _Response:
        self._require_write(auth)
        meta = self._readable_meta(repo_type, repo_id, auth)
        data = self._json_body(body)
        with self.storage.lock:
            if "private" in data:
                meta["private"] = bool(data["private"])
            if data.get("visibility") in ("private", "public"):
                meta["private"] = data["visibility"] == "private"
            if "gated" in data:
                meta["gated"] = data["gated"]
            self.storage.set_meta(repo_type, repo_id, meta)
        return _json({})

    @staticmethod
    def _validate_yaml(body: bytes) -> _Response:
        data = json.loads(body or b"{}")
        content = data.get("content") or ""
        if re.match(r"^---\s*\n", content):
            try:
                import yaml

                match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.DOTALL)
                if match is None:
                    raise ValueError("unterminated YAML front matter")
                yaml.safe_load(match.group(1))
            except ImportError:
                pass
            except Exception as err:  # invalid YAML: the Hub answers 400 with the list of errors
                return _json({"errors": [{"message": str(err)}], "warnings": []}, 400)
        return _json({"errors": [], "warnings": []})

    def _list_repos(self, repo_type: str, query: dict, auth: str) -> _Response:
        author = (query.get("author") or [None])[0]
        search = (query.get("search") or [None])[0]
        out = []
        for repo_id in self.storage.list_repos(repo_type):
            meta = self.storage.meta(repo_type, repo_id)
            if meta is None or (meta["private"] and auth not in ("read", "write")):
                continue
            if (author and not repo_id.startswith(author + "/")) or (search and search not in repo_id):
                continue
            sha = self.storage.resolve(repo_type, repo_id, "main")
            commit = self.storage.commit(repo_type, repo_id, sha)
            out.append({"_id": meta["_id"], "id": repo_id, "private": meta["private"], "sha": sha,
                        "lastModified": commit["date"], "createdAt": meta["createdAt"], "likes": 0,
                        "downloads": 0, "tags": []})
        return _json(out)

    def _repo_info(self, repo_type: str, repo_id: str, revision: str, query: dict, auth: str) -> _Response:
        meta = self._readable_meta(repo_type, repo_id, auth)
        sha = self._resolve_rev(repo_type, repo_id, revision)
        commit = self.storage.commit(repo_type, repo_id, sha)
        files = commit["files"]
        blobs = (query.get("blobs") or ["false"])[0].lower() in ("1", "true")
        siblings = []
        for path in sorted(files):
            entry = files[path]
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if entry["lfs"]:
                    sibling["lfs"] = {"sha256": entry["sha256"], "size": entry["size"],
                                      "pointerSize": len(lfs_pointer(entry["sha256"], entry["size"]))}
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": meta["_id"], "id": repo_id, "author": repo_id.split("/")[0] if "/" in repo_id else None,
            "sha": sha, "lastModified": commit["date"], "createdAt": meta["createdAt"],
            "private": meta["private"], "gated": meta.get("gated", False), "disabled": False,
            "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
            "usedStorage": sum(e["size"] for e in files.values()),
        }
        if "README.md" in files:
            readme = self.storage.read_object(files["README.md"]["sha256"]).decode("utf-8", "replace")
            card = _parse_front_matter(readme)
            if card is not None:
                info["cardData"] = card
                tags = card.get("tags")
                info["tags"] = [str(t) for t in tags] if isinstance(tags, list) else []
                if repo_type == "model":
                    for key in ("library_name", "pipeline_tag"):
                        if isinstance(card.get(key), str):
                            info[key] = card[key]
        if repo_type == "model" and "config.json" in files:
            try:
                config = json.loads(self.storage.read_object(files["config.json"]["sha256"]))
            except ValueError:
                config = None
            if isinstance(config, dict):
                info["config"] = {k: config[k] for k in ("architectures", "model_type") if k in config}
                if "model_type" in config:
                    info.setdefault("library_name", "transformers")
        expand = query.get("expand") or query.get("expand[]")
        if expand:
            info = {k: v for k, v in info.items() if k in set(expand) | {"_id", "id"}}
        return _json(info)

    # endpoints: listing --------------------------------------------------------------------------

    def _tree_entry(self, repo_type: str, repo_id: str, head: str, files: dict, path: str, is_dir: bool,
                    expand: bool) -> dict:
        if is_dir:
            children = sorted((p, e["oid"]) for p, e in files.items() if p.startswith(path + "/"))
            oid = hashlib.sha1(json.dumps(children).encode()).hexdigest()
            item: dict[str, Any] = {"type": "directory", "oid": oid, "size": 0, "path": path}
        else:
            entry = files[path]
            item = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
            if entry["lfs"]:
                item["lfs"] = {"oid": entry["sha256"], "size": entry["size"],
                               "pointerSize": len(lfs_pointer(entry["sha256"], entry["size"]))}
            if expand:
                item["securityFileStatus"] = {"status": "safe", "avScan": {"virusFound": False},
                                              "pickleImportScan": None}
        if expand:
            last = self.storage.last_commit(repo_type, repo_id, head, path)
            item["lastCommit"] = {"id": last["id"], "title": last["title"], "date": last["date"]}
        return item

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str, query: dict, auth: str) -> _Response:
        self._readable_meta(repo_type, repo_id, auth)
        sha = self._resolve_rev(repo_type, repo_id, revision)
        files = self.storage.commit(repo_type, repo_id, sha)["files"]
        recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true")
        expand = (query.get("expand") or ["false"])[0].lower() in ("1", "true")
        path = path.strip("/")
        dirs = {str(parent) for p in files for parent in PurePosixPath(p).parents if str(parent) != "."}
        if path and path not in dirs:
            raise HubError(404, f"{path} does not exist on \"{revision}\"", code="EntryNotFound",
                           headers={"X-Repo-Commit": sha})
        prefix = path + "/" if path else ""

        def wanted(p: str) -> bool:
            if not p.startswith(prefix):
                return False
            return recursive or "/" not in p[len(prefix):]

        items = [self._tree_entry(repo_type, repo_id, sha, files, d, True, expand) for d in sorted(dirs) if wanted(d)]
        items += [self._tree_entry(repo_type, repo_id, sha, files, f, False, expand) for f in sorted(files)
                  if wanted(f)]
        return _json(items, headers={"X-Repo-Commit": sha})

    def _paths_info(self, repo_type: str, repo_id: str, revision: str, headers: Mapping[str, str], body: bytes,
                    auth: str) -> _Response:
        self._readable_meta(repo_type, repo_id, auth)
        sha = self._resolve_rev(repo_type, repo_id, revision)
        if "json" in headers.get("Content-Type", ""):
            data = self._json_body(body)
            paths, expand = data.get("paths") or [], bool(data.get("expand"))
        else:  # huggingface_hub sends a form: paths=a&paths=b&expand=false
            form = parse_qs(body.decode(), keep_blank_values=True)
            paths = form.get("paths", [])
            expand = (form.get("expand") or ["false"])[0].lower() in ("1", "true")
        if isinstance(paths, str):
            paths = [paths]
        files = self.storage.commit(repo_type, repo_id, sha)["files"]
        dirs = {str(parent) for p in files for parent in PurePosixPath(p).parents if str(parent) != "."}
        out = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                out.append(self._tree_entry(repo_type, repo_id, sha, files, path, False, expand))
            elif path in dirs:
                out.append(self._tree_entry(repo_type, repo_id, sha, files, path, True, expand))
        return _json(out, headers={"X-Repo-Commit": sha})

    def _refs(self, repo_type: str, repo_id: str, query: dict, auth: str) -> _Response:
        self._readable_meta(repo_type, repo_id, auth)
        refs = self.storage.refs(repo_type, repo_id)

        def fmt(kind: str, names: dict) -> list[dict]:
            return [{"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": sha}
                    for name, sha in sorted(names.items())]

        data = {"branches": fmt("heads", refs["branches"]), "tags": fmt("tags", refs["tags"]),
                "converts": fmt("convert", refs["converts"])}
        if (query.get("include_prs") or ["0"])[0] in ("1", "true"):
            data["pullRequests"] = [{"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": sha}
                                    for n, sha in sorted(refs["pulls"].items(), key=lambda kv: int(kv[0]))]
        return _json(data)

    def _list_commits(self, repo_type: str, repo_id: str, revision: str, auth: str) -> _Response:
        self._readable_meta(repo_type, repo_id, auth)
        sha: str | None = self._resolve_rev(repo_type, repo_id, revision)
        out = []
        while sha is not None:
            commit = self.storage.commit(repo_type, repo_id, sha)
            out.append({"id": commit["id"], "title": commit["title"], "message": commit["message"],
                        "date": commit["date"], "authors": [{"user": a} for a in commit["authors"]]})
            sha = commit["parents"][0] if commit["parents"] else None
        return _json(out)

    # endpoints: writes -----------------------------------------------------------------------------

    def _writable_meta(self, repo_type: str, repo_id: str, auth: str) -> dict:
        self._require_write(auth)
        return self._readable_meta(repo_type, repo_id, auth)

    def _preupload(self, repo_type: str, repo_id: str, revision: str, query: dict, body: bytes,
                   auth: str) -> _Response:
        self._writable_meta(repo_type, repo_id, auth)
        sha = self._resolve_rev(repo_type, repo_id, revision)
        data = self._json_body(body)
        files = self.storage.commit(repo_type, repo_id, sha)["files"]
        patterns = self.storage.lfs_patterns_at(repo_type, repo_id, sha)
        out = []
        for item in data.get("files") or []:
            path = _validate_repo_path(item.get("path", ""))
            sample = base64.b64decode(item.get("sample") or "")
            mode = self.storage.upload_mode(path, int(item.get("size") or 0), sample, patterns)
            remote = files.get(path)
            # The client skips a file when this oid equals its local one: sha256 for LFS, git sha1 otherwise.
            oid = None if remote is None else (remote["sha256"] if remote["lfs"] else remote["oid"])
            out.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return _json({"files": out, "commitOid": sha})

    def _commit(self, repo_type: str, repo_id: str, revision: str, query: dict, body: bytes,
                auth: str) -> _Response:
        self._writable_meta(repo_type, repo_id, auth)
        create_pr = (query.get("create_pr") or ["0"])[0] in ("1", "true")
        header: dict = {}
        ops: list[_Op] = []
        for n, line in enumerate(body.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    header = value
                elif key == "file":
                    if value.get("encoding", "base64") == "base64":
                        data = base64.b64decode(value["content"], validate=True)
                    else:
                        data = value["content"].encode()
                    ops.append(_Op("file", value["path"], data=data))
                elif key == "lfsFile":
                    if value.get("algo", "sha256") != "sha256":
                        raise HubError(400, f"Unsupported LFS hash algorithm: {value.get('algo')}")
                    ops.append(_Op("lfsFile", value["path"], oid=value["oid"], size=value.get("size")))
                elif key in ("deletedFile", "deletedFolder"):
                    ops.append(_Op(key, value["path"]))
                elif key == "copyFile":
                    ops.append(_Op("copyFile", value["path"], src_path=value["srcPath"],
                                   src_revision=value.get("srcRevision")))
                else:
                    raise HubError(400, f"Unknown key {key!r} on line {n}")
            except HubError:
                raise
            except (ValueError, KeyError, TypeError) as err:
                raise HubError(400, f"Malformed commit payload on line {n}: {err!r}") from None
        summary = (header.get("summary") or "").strip()
        if not summary:
            raise HubError(400, "Commit summary is required")
        sha, pr_num = self.storage.apply_commit(
            repo_type, repo_id, revision, ops, title=summary, message=header.get("description") or "",
            author=self.user, parent_commit=header.get("parentCommit"), create_pr=create_pr,
        )
        base_url = self._repo_url(repo_type, repo_id)
        return _json({
            "success": True,
            "commitOid": sha,
            "commitUrl": f"{base_url}/commit/{sha}",
            "hookOutput": "",
            "pullRequestUrl": f"{base_url}/discussions/{pr_num}" if pr_num is not None else None,
        })

    def _branch(self, method: str, repo_type: str, repo_id: str, branch: str, body: bytes, auth: str) -> _Response:
        self._writable_meta(repo_type, repo_id, auth)
        with self.storage.lock:
            refs = self.storage.refs(repo_type, repo_id)
            if method == "DELETE":
                if branch not in refs["branches"]:
                    raise HubError(404, f"Branch not found: {branch}", code="RevisionNotFound")
                if branch == "main":
                    raise HubError(403, "Cannot delete the default branch")
                del refs["branches"][branch]
            else:
                if branch in refs["branches"]:
                    raise HubError(409, f"Reference already exists: refs/heads/{branch}")
                if not branch or branch.startswith("refs/") or _COMMIT_RE.match(branch) or ".." in branch:
                    raise HubError(400, f"Invalid branch name: {branch}")
                start = self._json_body(body).get("startingPoint") or "main"
                refs["branches"][branch] = self._resolve_rev(repo_type, repo_id, start)
            self.storage.set_refs(repo_type, repo_id, refs)
        return _json({})

    def _tag(self, method: str, repo_type: str, repo_id: str, target: str, body: bytes, auth: str) -> _Response:
        self._writable_meta(repo_type, repo_id, auth)
        with self.storage.lock:
            refs = self.storage.refs(repo_type, repo_id)
            if method == "DELETE":  # DELETE /tag/{tag}
                if target not in refs["tags"]:
                    raise HubError(404, f"Tag not found: {target}", code="RevisionNotFound")
                del refs["tags"][target]
            else:  # POST /tag/{revision} {"tag": name}
                tag = self._json_body(body).get("tag")
                if not tag or not isinstance(tag, str):
                    raise HubError(400, "Missing tag name")
                if tag in refs["tags"]:
                    raise HubError(409, f"Tag already exists: {tag}")
                refs["tags"][tag] = self._resolve_rev(repo_type, repo_id, target)
            self.storage.set_refs(repo_type, repo_id, refs)
        return _json({})

    # endpoints: LFS ---------------------------------------------------------------------------------

    def _lfs_batch(self, repo_type: str, repo_id: str, body: bytes, auth: str) -> _Response:
        self._writable_meta(repo_type, repo_id, auth)
        data = self._json_body(body)
        if data.get("operation") != "upload":
            raise HubError(400, "Only the 'upload' operation is supported by the test hub")
        transfers = data.get("transfers") or ["basic"]
        if "basic" not in transfers:
            raise HubError(400, f"Unsupported transfers {transfers}: only 'basic' is available")
        if data.get("hash_algo", "sha256") != "sha256":
            raise HubError(400, f"Unsupported hash_algo {data.get('hash_algo')}")
        expires = int(time.time()) + 3600
        objects = []
        for obj in data.get("objects") or []:
            oid, size = str(obj.get("oid", "")).lower(), obj.get("size")
            if not _SHA256_RE.match(oid) or not isinstance(size, int) or size < 0:
                objects.append({"oid": oid, "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "Invalid oid or size"}})
                continue
            if self.storage.has_object(oid) and self.storage.object_path(oid).stat().st_size == size:
                objects.append({"oid": oid, "size": size})  # already present: no actions, the client skips it
                continue
            # Like the Hub's presigned storage URLs, the upload URL carries its own credentials:
            # huggingface_hub PUTs to it without an Authorization header.
            href = f"{self.url}/lfs-upload/{oid}?size={size}&expires={expires}&sig={self._sign(oid, size, expires)}"
            prefix = _RESOLVE_PREFIX[repo_type]
            objects.append({
                "oid": oid, "size": size, "authenticated": True,
                "actions": {
                    "upload": {"href": href, "expires_in": 3600},
                    "verify": {"href": f"{self.url}/{prefix}{repo_id}.git/info/lfs/objects/verify", "expires_in": 3600},
                },
            })
        return _json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                     content_type="application/vnd.git-lfs+json")

    def _lfs_upload(self, oid: str, query: dict, body: bytes, auth: str) -> _Response:
        oid = oid.lower()
        size_q, expires_q, sig = (query.get(k, [""])[0] for k in ("size", "expires", "sig"))
        if sig:
            try:
                size, expires = int(size_q), int(expires_q)
            except ValueError:
                raise HubError(400, "Malformed signed upload URL") from None
            if not hmac.compare_digest(sig, self._sign(oid, size, expires)):
                raise HubError(403, "Signature does not match")
            if expires < time.time():
                raise HubError(403, "Upload URL expired")
        else:
            self._require_write(auth)
            size = len(body)
        if not _SHA256_RE.match(oid):
            raise HubError(400, f"Invalid oid: {oid}")
        if len(body) != size:
            raise HubError(400, f"Size mismatch: expected {size} bytes, got {len(body)}")
        actual = hashlib.sha256(body).hexdigest()
        if actual != oid:
            raise HubError(400, f"sha256 mismatch: expected {oid}, got {actual}")
        self.storage.put_object(body)
        return _Response(200, b"", {"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def _lfs_verify(self, repo_type: str, repo_id: str, body: bytes, auth: str) -> _Response:
        self._writable_meta(repo_type, repo_id, auth)
        data = self._json_body(body)
        oid, size = str(data.get("oid", "")).lower(), data.get("size")
        if not self.storage.has_object(oid) or self.storage.object_path(oid).stat().st_size != size:
            raise HubError(404, f"LFS object {oid} not found")
        return _json({"message": "ok"})

    # endpoints: downloads --------------------------------------------------------------------------

    def _resolve_file(self, method: str, repo_type: str, repo_id: str, revision: str, path: str,
                      headers: Mapping[str, str], auth: str) -> _Response:
        self._readable_meta(repo_type, repo_id, auth)
        sha = self._resolve_rev(repo_type, repo_id, revision)
        entry = self.storage.commit(repo_type, repo_id, sha)["files"].get(path)
        if entry is None:
            # X-Repo-Commit lets huggingface_hub cache the absence of the file for that commit.
            raise HubError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": sha})
        size = entry["size"]
        out_headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{entry["sha256"] if entry["lfs"] else entry["oid"]}"',
            "Accept-Ranges": "bytes",
            "Content-Type": mimetypes.guess_type(path)[0] or "application/octet-stream",
        }
        if entry["lfs"]:
            out_headers["X-Linked-Etag"] = f'"{entry["sha256"]}"'
            out_headers["X-Linked-Size"] = str(size)
        file_path = self.storage.object_path(entry["sha256"])
        status, start, end = 200, 0, size
        byte_range = _parse_range(headers.get("Range"), size)
        if byte_range == "unsatisfiable":
            return _Response(416, b"", {**out_headers, "Content-Range": f"bytes */{size}"})
        if byte_range is not None:
            status, (start, end) = 206, byte_range
            out_headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        return _Response(status, b"", out_headers, file=file_path, start=start, end=end)


def _parse_range(value: str | None, size: int) -> tuple[int, int] | str | None:
    """Single `bytes=` range -> [start, end) ; None to serve the whole file; "unsatisfiable" -> 416."""
    if not value:
        return None
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if match is None:
        return None  # multi-range or garbage: ignoring Range (full 200) is allowed by RFC 9110
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        length = int(last)
        if length == 0:
            return "unsatisfiable"
        return max(size - length, 0), size
    start = int(first)
    if start >= size:
        return "unsatisfiable"
    end = min(int(last) + 1, size) if last else size
    if end <= start:
        return "unsatisfiable"
    return start, end


@pytest.fixture
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    """A started `HubServer` (write token `TEST_TOKEN`, read-only token `TEST_READ_TOKEN`) with its own
    storage and client cache; stopped after the test, which then fails if the server itself crashed."""
    server = HubServer(tmp_path_factory.mktemp("hub"), TEST_TOKEN, read_tokens=(TEST_READ_TOKEN,)).start()
    try:
        yield server
    finally:
        server.stop()
    assert not server.errors, "test hub server raised:\n" + "\n".join(server.errors)
