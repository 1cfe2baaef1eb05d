"""Checks that `tests.hub_server` speaks enough of the Hub protocol for the real clients.

Every client-side check runs the real `huggingface_hub` / `transformers` / `datasets` in a
subprocess configured by `HubServer.env()`: those libraries read `HF_ENDPOINT` and `HF_HUB_OFFLINE`
at import time, and the suite itself runs with `HF_HUB_OFFLINE=1`. Protocol details that the
clients hide (status codes, headers, atomicity) are checked in-process over plain `http.client`.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.hub_server import TEST_READ_TOKEN, TEST_TOKEN, HubServer, git_blob_sha1, hub_server  # noqa: F401


def run_client(server: HubServer, code: str, cwd: Path, *, token: str | bool | None = True,
               extra_env: dict[str, str] | None = None, timeout: float = 240) -> dict:
    """Run `code` in a fresh interpreter against `server`; it reports by printing `RESULT=<json>`."""
    env = {**os.environ, **server.env(token=token), **(extra_env or {})}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"client failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}"
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT=")]
    assert results, f"no RESULT line:\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}"
    return json.loads(results[-1][len("RESULT="):])


def request(server: HubServer, method: str, path: str, *, body: bytes | None = None, token: str | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    # http.client rather than urllib: no proxy environment variables can get in the way
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    all_headers = dict(headers or {})
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=body, headers=all_headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def ndjson(*items: dict) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# In-process protocol checks (no client library)
# --------------------------------------------------------------------------------------------


def test_resolve_headers_ranges_and_error_codes(hub_server: HubServer) -> None:
    weights = bytes(range(256)) * 8  # NUL bytes + .safetensors => stored as LFS
    sha = hub_server.seed_repo("org/p", {"a.txt": b"hello world", "w.safetensors": weights})
    assert hub_server.lfs_files("org/p") == {"w.safetensors"}

    status, headers, body = request(hub_server, "HEAD", "/org/p/resolve/main/a.txt")
    assert status == 200 and body == b""
    assert headers["x-repo-commit"] == sha
    # git's own blob id for "hello world" (`git hash-object`), which the Hub uses as ETag
    assert headers["etag"] == '"95d09f2b10159347eece71399a7e2e907ea3df4f"' == f'"{git_blob_sha1(b"hello world")}"'
    assert headers["content-length"] == "11" and "x-linked-etag" not in headers

    status, headers, _ = request(hub_server, "HEAD", f"/org/p/resolve/{sha}/w.safetensors")
    assert status == 200
    assert headers["x-linked-etag"] == headers["etag"] == f'"{sha256(weights)}"'
    assert headers["x-linked-size"] == headers["content-length"] == str(len(weights))

    status, headers, body = request(hub_server, "GET", "/org/p/resolve/main/a.txt", headers={"Range": "bytes=6-"})
    assert (status, body, headers["content-range"]) == (206, b"world", "bytes 6-10/11")
    status, _, body = request(hub_server, "GET", "/org/p/resolve/main/a.txt", headers={"Range": "bytes=0-4"})
    assert (status, body) == (206, b"hello")
    status, headers, _ = request(hub_server, "GET", "/org/p/resolve/main/a.txt", headers={"Range": "bytes=11-"})
    assert status == 416 and headers["content-range"] == "bytes */11"

    status, headers, body = request(hub_server, "HEAD", "/org/p/resolve/main/nope.txt")
    assert (status, headers["x-error-code"], headers["x-repo-commit"]) == (404, "EntryNotFound", sha)
    status, headers, body = request(hub_server, "GET", "/org/p/resolve/nobranch/a.txt")
    assert (status, headers["x-error-code"]) == (404, "RevisionNotFound")
    assert "error" in json.loads(body)
    status, headers, _ = request(hub_server, "GET", "/org/missing/resolve/main/a.txt")
    assert (status, headers["x-error-code"]) == (404, "RepoNotFound")
    status, headers, _ = request(hub_server, "GET", "/datasets/org/p/resolve/main/a.txt")  # p is a model
    assert (status, headers["x-error-code"]) == (404, "RepoNotFound")


def test_private_repos_and_write_auth(hub_server: HubServer) -> None:
    hub_server.seed_repo("org/secret", {"a.txt": b"s"}, private=True)
    for token in (None, "hf_wrong"):
        status, headers, _ = request(hub_server, "GET", "/api/models/org/secret", token=token)
        assert (status, headers["x-error-code"]) == (404, "RepoNotFound")
        status, _, _ = request(hub_server, "HEAD", "/org/secret/resolve/main/a.txt", token=token)
        assert status == 404
    for token in (TEST_TOKEN, TEST_READ_TOKEN):
        status, _, body = request(hub_server, "GET", "/api/models/org/secret", token=token)
        assert status == 200 and json.loads(body)["private"] is True

    create = json.dumps({"name": "new", "organization": "org", "type": "model"}).encode()
    expected = {None: 401, "hf_wrong": 403, TEST_READ_TOKEN: 403, TEST_TOKEN: 200}
    for token, code in expected.items():
        status, headers, body = request(hub_server, "POST", "/api/repos/create", body=create, token=token,
                                        headers={"Content-Type": "application/json"})
        assert status == code, (token, body)
        if code != 200:
            assert json.loads(body)["error"]
    status, _, body = request(hub_server, "POST", "/api/repos/create", body=create, token=TEST_TOKEN)
    assert status == 409 and json.loads(body)["url"].endswith("/org/new")
    status, _, body = request(hub_server, "GET", "/api/whoami-v2", token=TEST_TOKEN)
    assert json.loads(body)["name"] == "test-user"
    assert request(hub_server, "GET", "/api/whoami-v2", token="hf_wrong")[0] == 401


def test_commit_is_atomic_and_validated(hub_server: HubServer) -> None:
    base = hub_server.seed_repo("org/c", {"keep.txt": b"keep"})

    def commit(*ops: dict, parent: str | None = None, query: str = "") -> tuple[int, dict, dict]:
        header = {"summary": "test", "description": ""} | ({"parentCommit": parent} if parent else {})
        status, headers, body = request(hub_server, "POST", f"/api/models/org/c/commit/main{query}",
                                        body=ndjson({"key": "header", "value": header}, *ops), token=TEST_TOKEN,
                                        headers={"Content-Type": "application/x-ndjson"})
        return status, headers, json.loads(body)

    new_file = {"key": "file", "value": {"path": "new.txt", "content": base64.b64encode(b"n").decode(),
                                         "encoding": "base64"}}
    ghost = {"key": "lfsFile", "value": {"path": "big.bin", "algo": "sha256", "oid": "ab" * 32, "size": 3}}
    status, _, body = commit(new_file, ghost)
    assert status == 422 and "does not exist" in body["error"]
    status, headers, _ = commit(new_file, {"key": "deletedFile", "value": {"path": "nope.txt"}})
    assert (status, headers["x-error-code"]) == (404, "EntryNotFound")
    assert commit(new_file, parent="0" * 40)[0] == 412  # a stale parent commit
    assert commit({"key": "file", "value": {"path": "../evil", "content": ""}})[0] == 400
    # none of the failed commits moved the branch or leaked a file
    assert hub_server.head("org/c") == base and set(hub_server.files("org/c")) == {".gitattributes", "keep.txt"}

    # LFS upload: the content must hash to the announced oid, and the URL must be signed (or the caller authed)
    data = b"\0lfs payload"
    batch = json.dumps({"operation": "upload", "transfers": ["basic", "multipart"], "hash_algo": "sha256",
                        "objects": [{"oid": sha256(data), "size": len(data)}]}).encode()
    status, _, body = request(hub_server, "POST", "/org/c.git/info/lfs/objects/batch", body=batch)
    assert status == 401
    status, _, body = request(hub_server, "POST", "/org/c.git/info/lfs/objects/batch", body=batch, token=TEST_TOKEN)
    href = json.loads(body)["objects"][0]["actions"]["upload"]["href"]
    upload_path = href[len(hub_server.url):]
    assert request(hub_server, "PUT", upload_path, body=b"\0tampered!!!")[0] == 400
    assert request(hub_server, "PUT", upload_path.replace("sig=", "sig=0"), body=data)[0] == 403
    assert request(hub_server, "PUT", upload_path.split("?")[0], body=data)[0] == 401
    assert request(hub_server, "PUT", upload_path, body=data)[0] == 200
    status, _, body = request(hub_server, "POST", "/org/c.git/info/lfs/objects/batch", body=batch, token=TEST_TOKEN)
    assert "actions" not in json.loads(body)["objects"][0]  # already present: nothing to upload

    ok = {"key": "lfsFile", "value": {"path": "big.bin", "algo": "sha256", "oid": sha256(data), "size": len(data)}}
    status, _, body = commit(new_file, ok, {"key": "deletedFile", "value": {"path": "keep.txt"}}, parent=base)
    assert status == 200 and len(body["commitOid"]) == 40 and body["pullRequestUrl"] is None
    assert hub_server.files("org/c") == {".gitattributes": hub_server.files("org/c")[".gitattributes"],
                                         "big.bin": data, "new.txt": b"n"}
    assert hub_server.files("org/c", revision=base)["keep.txt"] == b"keep"  # old snapshot still served
    status, _, body = commit({"key": "deletedFile", "value": {"path": "new.txt"}}, query="?create_pr=1")
    assert status == 200 and body["pullRequestUrl"].endswith("/org/c/discussions/1")
    assert set(hub_server.files("org/c", revision="refs/pr/1")) == {".gitattributes", "big.bin"}
    assert request(hub_server, "HEAD", "/org/c/resolve/refs%2Fpr%2F1/new.txt")[0] == 404
    assert request(hub_server, "HEAD", "/org/c/resolve/main/new.txt")[0] == 200


# --------------------------------------------------------------------------------------------
# Real clients in subprocesses
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_huggingface_hub_upload_flow(hub_server: HubServer, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    weights = os.urandom(1024 * 1024)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n- tiny\n---\n# Tiny\n")
    (folder / "notes.txt").write_text("first\n")
    out = run_client(hub_server, f"""
        import json
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
        from huggingface_hub.errors import HfHubHTTPError
        api = HfApi()
        out = {{}}
        out["url"] = str(api.create_repo("org/tiny"))
        api.create_repo("org/tiny", exist_ok=True)
        try:
            api.create_repo("org/tiny")
        except HfHubHTTPError as err:
            out["duplicate"] = err.response.status_code
        ci = api.upload_folder(folder_path={str(folder)!r}, repo_id="org/tiny", commit_message="first upload")
        out["sha"] = ci.oid
        out["files"] = api.list_repo_files("org/tiny")
        info = api.repo_info("org/tiny", files_metadata=True)
        out["info"] = {{"sha": info.sha, "license": info.card_data.license, "tags": info.tags,
                       "lfs": sorted(s.rfilename for s in info.siblings if s.lfs is not None)}}
        out["pinned_sha"] = api.model_info("org/tiny", revision=ci.oid).sha
        out["tree"] = {{f.path: [type(f).__name__, f.last_commit.title, f.lfs is not None]
                       for f in api.list_repo_tree("org/tiny", expand=True)}}
        out["paths_info"] = [[type(f).__name__, f.path, f.size]
                             for f in api.get_paths_info("org/tiny", ["config.json", "missing.txt"])]
        out["again"] = api.upload_folder(folder_path={str(folder)!r}, repo_id="org/tiny", commit_message="same").oid
        pr = api.create_commit("org/tiny", [CommitOperationAdd("notes.txt", b"second\\n"),
                                            CommitOperationDelete("config.json")],
                               commit_message="Proposal", create_pr=True)
        out["pr"] = {{"revision": pr.pr_revision, "num": pr.pr_num, "oid": pr.oid}}
        out["pr_files"] = api.list_repo_files("org/tiny", revision=pr.pr_revision)
        refs = api.list_repo_refs("org/tiny", include_pull_requests=True)
        out["branches"] = {{b.name: b.target_commit for b in refs.branches}}
        out["prs"] = {{p.ref: p.target_commit for p in refs.pull_requests}}
        # branch / tag / history / delete endpoints, as used by push_to_hub(revision=...) and publishing code
        api.create_branch("org/tiny", branch="dev")
        api.create_branch("org/tiny", branch="dev", exist_ok=True)
        dev = api.upload_file(path_or_fileobj=b"dev\\n", path_in_repo="notes.txt", repo_id="org/tiny",
                              revision="dev", commit_message="on dev")
        api.delete_file("README.md", repo_id="org/tiny", revision="dev")
        api.create_tag("org/tiny", tag="v1.0", revision=dev.oid)
        out["dev_files"] = api.list_repo_files("org/tiny", revision="dev")
        out["tags"] = {{t.name: t.target_commit for t in api.list_repo_refs("org/tiny").tags}}
        out["dev_oid"] = dev.oid
        out["history"] = [c.title for c in api.list_repo_commits("org/tiny", revision="dev")]
        out["listed"] = [m.id for m in api.list_models(author="org")]
        api.create_repo("org/scratch")
        api.delete_repo("org/scratch")
        api.delete_repo("org/scratch", missing_ok=True)
        out["scratch_exists"] = api.repo_exists("org/scratch")
        print("RESULT=" + json.dumps(out))
    """, tmp_path)

    sha = out["sha"]
    assert out["url"] == f"{hub_server.url}/org/tiny" and out["duplicate"] == 409
    assert out["files"] == [".gitattributes", "README.md", "config.json", "model.safetensors", "notes.txt"]
    assert out["info"] == {"sha": sha, "license": "apache-2.0", "tags": ["tiny"], "lfs": ["model.safetensors"]}
    assert out["pinned_sha"] == sha
    assert out["tree"] == {".gitattributes": ["RepoFile", "initial commit", False],
                           "README.md": ["RepoFile", "first upload", False],
                           "config.json": ["RepoFile", "first upload", False],
                           "model.safetensors": ["RepoFile", "first upload", True],
                           "notes.txt": ["RepoFile", "first upload", False]}
    assert out["paths_info"] == [["RepoFile", "config.json", (folder / "config.json").stat().st_size]]
    assert out["again"] == sha  # identical content: the client sees matching oids and makes no commit
    commits = [r for r in hub_server.log if r.method == "POST" and r.path == "/api/models/org/tiny/commit/main"]
    assert [r.query.get("create_pr") for r in commits] == [None, ["1"]]
    # the 1 MB weights went through the LFS batch API + signed PUT, exactly once
    assert sum(r.path.startswith("/lfs-upload/") for r in hub_server.log) == 1
    assert hub_server.lfs_files("org/tiny") == {"model.safetensors"}
    assert hub_server.files("org/tiny")["model.safetensors"] == weights
    assert out["pr"]["revision"] == "refs/pr/1" and out["pr"]["num"] == 1
    assert out["prs"] == {"refs/pr/1": out["pr"]["oid"]}
    assert out["branches"] == {"main": sha}
    assert out["tags"] == {"v1.0": out["dev_oid"]}
    assert out["dev_files"] == [".gitattributes", "config.json", "model.safetensors", "notes.txt"]
    assert out["history"] == ["Delete README.md with huggingface_hub", "on dev", "first upload", "initial commit"]
    assert out["listed"] == ["org/tiny"] and out["scratch_exists"] is False
    assert "config.json" not in out["pr_files"]
    assert hub_server.files("org/tiny", revision="refs/pr/1")["notes.txt"] == b"second\n"


@pytest.mark.slow
def test_huggingface_hub_downloads(hub_server: HubServer, tmp_path: Path) -> None:
    v1 = {"config.json": b'{"v": 1}', "model.safetensors": os.urandom(300_000), "nested/deep/file.txt": b"deep"}
    sha1 = hub_server.seed_repo("org/dl", v1)
    v2 = {**v1, "config.json": b'{"v": 2}', "extra.txt": b"extra"}
    sha2 = hub_server.seed_repo("org/dl", {"config.json": v2["config.json"], "extra.txt": b"extra"})
    out = run_client(hub_server, f"""
        import hashlib, json, os
        from huggingface_hub import hf_hub_download, snapshot_download
        from huggingface_hub.errors import (EntryNotFoundError, RemoteEntryNotFoundError,
                                            RepositoryNotFoundError, RevisionNotFoundError)

        def digests(folder):
            return {{os.path.relpath(os.path.join(d, f), folder).replace(os.sep, "/"):
                        hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
                    for d, _, files in os.walk(folder) for f in files if ".cache" not in d}}

        def read(path):
            return open(path, "rb").read().decode("latin-1")

        out = {{}}
        main_dir = snapshot_download("org/dl")
        out["main_dir"] = os.path.basename(main_dir)
        out["main"] = digests(main_dir)
        out["v1"] = digests(snapshot_download("org/dl", revision={sha1!r}))
        out["local_dir"] = digests(snapshot_download("org/dl", local_dir="local-copy"))
        out["config_main"] = read(hf_hub_download("org/dl", "config.json"))
        out["config_v1"] = read(hf_hub_download("org/dl", "config.json", revision={sha1!r}))
        out["weights_v1"] = hashlib.sha256(open(hf_hub_download("org/dl", "model.safetensors", revision={sha1!r},
                                                                force_download=True), "rb").read()).hexdigest()
        for name, call in {{
            "missing_file": lambda: hf_hub_download("org/dl", "nope.txt"),
            "missing_revision": lambda: hf_hub_download("org/dl", "config.json", revision="nobranch"),
            "missing_repo": lambda: hf_hub_download("org/nope", "config.json"),
        }}.items():
            try:
                call()
                out[name] = None
            except Exception as err:
                out[name] = [type(err).__name__, isinstance(err, EntryNotFoundError),
                             isinstance(err, RemoteEntryNotFoundError), isinstance(err, RevisionNotFoundError),
                             isinstance(err, RepositoryNotFoundError)]
        print("RESULT=" + json.dumps(out))
    """, tmp_path)

    def expected(files: dict[str, bytes]) -> dict[str, str]:
        return {path: sha256(data) for path, data in files.items()} | {
            ".gitattributes": sha256(hub_server.files("org/dl")[".gitattributes"])}

    assert out["main_dir"] == sha2
    assert out["main"] == expected(v2) == out["local_dir"]
    assert out["v1"] == expected(v1)
    assert (out["config_main"], out["config_v1"]) == ('{"v": 2}', '{"v": 1}')
    assert out["weights_v1"] == sha256(v1["model.safetensors"])
    assert out["missing_file"] == ["RemoteEntryNotFoundError", True, True, False, False]
    assert out["missing_revision"][0] == "RevisionNotFoundError"
    assert out["missing_repo"][0] == "RepositoryNotFoundError"


@pytest.mark.slow
def test_transformers_push_and_from_pretrained(hub_server: HubServer, tmp_path: Path) -> None:
    pushed = run_client(hub_server, """
        import json
        import torch
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
        from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        vocab = {tok: i for i, tok in enumerate(specials + ["hello", "world", "tiny", "model"])}
        backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
        backend.normalizer = normalizers.BertNormalizer(lowercase=True)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        tokenizer = BertTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                      cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
        torch.manual_seed(0)
        config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, num_labels=2)
        model = BertForSequenceClassification(config).eval()
        model_commit = model.push_to_hub("org/tiny", commit_message="Add model")
        tok_commit = tokenizer.push_to_hub("org/tiny", commit_message="Add tokenizer")
        with torch.no_grad():
            logits = model(**tokenizer("hello tiny world", return_tensors="pt")).logits
        print("RESULT=" + json.dumps({"model_sha": model_commit.oid, "sha": tok_commit.oid,
                                      "ids": tokenizer("hello tiny world")["input_ids"],
                                      "logits": logits.tolist()}))
    """, tmp_path)
    files = hub_server.files("org/tiny")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    assert hub_server.lfs_files("org/tiny") == {"model.safetensors"}
    hub_server.clear_log()

    loaded = run_client(hub_server, f"""
        import json
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        model = AutoModelForSequenceClassification.from_pretrained("org/tiny")
        tokenizer = AutoTokenizer.from_pretrained("org/tiny", revision={pushed["sha"]!r})
        with torch.no_grad():
            logits = model(**tokenizer("hello tiny world", return_tensors="pt")).logits
        print("RESULT=" + json.dumps({{"ids": tokenizer("hello tiny world")["input_ids"], "logits": logits.tolist(),
                                      "tokenizer": type(tokenizer).__name__,
                                      "model": type(model).__name__}}))
    """, tmp_path)
    assert loaded["model"] == "BertForSequenceClassification"
    assert loaded["ids"] == pushed["ids"] == [2, 5, 7, 6, 3]
    assert loaded["logits"][0] == pytest.approx(pushed["logits"][0], abs=1e-5)
    # transformers probed optional files and accepted the EntryNotFound 404s
    probes = [r for r in hub_server.log if r.method == "HEAD" and r.status == 404]
    assert probes and all("/resolve/" in r.path for r in probes)
    assert any(r.path.endswith(f"/resolve/{pushed['sha']}/tokenizer.json") and r.status == 200
               for r in hub_server.log)


@pytest.mark.slow
def test_datasets_load_dataset_at_branch_and_commit(hub_server: HubServer, tmp_path: Path) -> None:
    out = run_client(hub_server, """
        import json
        from datasets import Dataset, DatasetDict, load_dataset
        from huggingface_hub import HfApi

        Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, 0]}).to_parquet(
            "v1/data/train-00000-of-00001.parquet")
        Dataset.from_dict({"text": ["d"], "label": [1]}).to_parquet("v1/data/validation-00000-of-00001.parquet")
        api = HfApi()
        api.create_repo("org/ds", repo_type="dataset")
        v1 = api.upload_folder(folder_path="v1", repo_id="org/ds", repo_type="dataset", commit_message="v1").oid
        DatasetDict({
            "train": Dataset.from_dict({"text": ["x", "y"], "label": [1, 1]}),
            "validation": Dataset.from_dict({"text": ["z"], "label": [0]}),
        }).push_to_hub("org/ds", commit_message="v2")

        main = load_dataset("org/ds")
        old = load_dataset("org/ds", revision=v1)
        print("RESULT=" + json.dumps({
            "v1": v1,
            "main": {split: list(main[split]["text"]) for split in main},
            "old": {split: list(old[split]["text"]) for split in old},
            "labels": list(old["train"]["label"]),
        }))
    """, tmp_path)
    assert out["main"] == {"train": ["x", "y"], "validation": ["z"]}
    assert out["old"] == {"train": ["a", "b", "c"], "validation": ["d"]}
    assert out["labels"] == [0, 1, 0]
    assert hub_server.lfs_files("org/ds", repo_type="dataset") == {
        "data/train-00000-of-00001.parquet", "data/validation-00000-of-00001.parquet"}
    assert any(r.path == "/datasets/org/ds.git/info/lfs/objects/batch" for r in hub_server.log)


@pytest.mark.slow
def test_clients_without_valid_token_are_refused(hub_server: HubServer, tmp_path: Path) -> None:
    pub_sha = hub_server.seed_repo("org/pub", {"a.txt": b"public"})
    hub_server.seed_repo("org/secret", {"a.txt": b"secret"}, private=True)
    out = run_client(hub_server, f"""
        import json
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

        def outcome(call):
            try:
                call()
                return "ok"
            except HfHubHTTPError as err:
                return [type(err).__name__, err.response.status_code]

        anon, wrong, reader = HfApi(), HfApi(token="hf_wrong_token"), HfApi(token={TEST_READ_TOKEN!r})
        upload = dict(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="org/pub")
        out = {{
            "create_anon": outcome(lambda: anon.create_repo("org/new-anon")),
            "create_wrong": outcome(lambda: wrong.create_repo("org/new-wrong")),
            "create_reader": outcome(lambda: reader.create_repo("org/new-reader")),
            "upload_anon": outcome(lambda: anon.upload_file(**upload)),
            "upload_wrong": outcome(lambda: wrong.upload_file(**upload)),
            "upload_reader": outcome(lambda: reader.upload_file(**upload)),
            "whoami_wrong": outcome(lambda: wrong.whoami()),
            "read_public": open(hf_hub_download("org/pub", "a.txt"), "rb").read().decode(),
            "info_private_anon": outcome(lambda: anon.repo_info("org/secret")),
            "download_private_anon": outcome(lambda: hf_hub_download("org/secret", "a.txt")),
            "info_private_reader": reader.repo_info("org/secret").private,
        }}
        print("RESULT=" + json.dumps(out))
    """, tmp_path, token=None)
    assert out["create_anon"] == ["HfHubHTTPError", 401]
    assert out["create_wrong"] == ["HfHubHTTPError", 403]
    assert out["create_reader"] == ["HfHubHTTPError", 403]
    assert out["upload_anon"] == ["HfHubHTTPError", 401]
    assert out["upload_wrong"] == ["HfHubHTTPError", 403]
    assert out["upload_reader"] == ["HfHubHTTPError", 403]
    assert out["whoami_wrong"] == ["HfHubHTTPError", 401]
    assert out["read_public"] == "public"
    assert out["info_private_anon"] == ["RepositoryNotFoundError", 404]
    assert out["download_private_anon"] == ["RepositoryNotFoundError", 404]
    assert out["info_private_reader"] is True
    assert hub_server.head("org/pub") == pub_sha
    assert all(hub_server.head(f"org/new-{who}") is None for who in ("anon", "wrong", "reader"))


@pytest.mark.slow
def test_fault_injection_retries_and_failed_commits(hub_server: HubServer, tmp_path: Path) -> None:
    # Which calls huggingface_hub 2.x retries (utils/_http.py `http_backoff`: 408/429/5xx and network
    # errors, waits 1s, 2s, 4s...): preupload, LFS batch, LFS PUT/verify, tree pages, HfFileSystem
    # reads. NOT retried: the commit POST (`_send_commit` uses a plain post so a lost answer cannot
    # create a duplicate commit), create_repo, repo_info, refs, paths-info. A failing HEAD on
    # /resolve is retried once with backoff when nothing is cached.
    for name in ("f1", "f2", "f3", "f4"):
        hub_server.seed_repo(f"org/{name}", {"a.txt": name.encode()})
    heads = {name: hub_server.head(f"org/{name}") for name in ("f2", "f3")}
    folder = tmp_path / "f1"
    folder.mkdir()
    (folder / "w.safetensors").write_bytes(os.urandom(50_000))
    (folder / "b.txt").write_text("b")

    faults = hub_server.faults
    faults.fail_next("/api/models/org/f1/preupload/", 503, times=2)
    faults.fail_next("/lfs-upload/", 502, times=1)
    faults.fail_next("/api/models/org/f2/commit/", 503, times=1)
    faults.drop_connections("/api/models/org/f3/commit/")
    faults.fail_next("/org/f4/resolve/", 503, times=1, method="HEAD")
    out = run_client(hub_server, f"""
        import json
        from huggingface_hub import HfApi, hf_hub_download
        api = HfApi()

        def outcome(call):
            try:
                return ["ok", call()]
            except Exception as err:
                return [type(err).__name__, getattr(getattr(err, "response", None), "status_code", None)]

        upload = dict(path_or_fileobj=b"new", path_in_repo="new.txt")
        print("RESULT=" + json.dumps({{
            "f1": outcome(lambda: api.upload_folder(folder_path={str(folder)!r}, repo_id="org/f1").oid),
            "f2": outcome(lambda: api.upload_file(repo_id="org/f2", **upload).oid),
            "f3": outcome(lambda: api.upload_file(repo_id="org/f3", **upload).oid),
            "f4": outcome(lambda: open(hf_hub_download("org/f4", "a.txt"), "rb").read().decode()),
        }}))
    """, tmp_path)

    def statuses(fragment: str) -> list[int | None]:
        return [r.status for r in hub_server.log if fragment in r.path]

    assert out["f1"] == ["ok", hub_server.head("org/f1")]
    assert statuses("/api/models/org/f1/preupload/") == [503, 503, 200]
    assert statuses("/lfs-upload/") == [502, 200]
    assert set(hub_server.files("org/f1")) == {".gitattributes", "a.txt", "b.txt", "w.safetensors"}
    assert out["f2"] == ["HfHubHTTPError", 503]
    assert out["f3"][0] in ("RemoteProtocolError", "ReadError", "ConnectError")
    assert statuses("/api/models/org/f3/commit/") == [None]  # dropped: no answer was sent
    assert {name: hub_server.head(f"org/{name}") for name in ("f2", "f3")} == heads
    assert out["f4"] == ["ok", "f4"]
    assert [r.status for r in hub_server.log if r.method == "HEAD" and "/org/f4/" in r.path] == [503, 200]

    # dropping lasts until cleared
    body = ndjson({"key": "header", "value": {"summary": "after clear"}},
                  {"key": "file", "value": {"path": "c.txt", "content": base64.b64encode(b"c").decode()}})
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        request(hub_server, "POST", "/api/models/org/f3/commit/main", body=body, token=TEST_TOKEN)
    faults.clear()
    status, _, _ = request(hub_server, "POST", "/api/models/org/f3/commit/main", body=body, token=TEST_TOKEN)
    assert status == 200 and hub_server.files("org/f3")["c.txt"] == b"c"

    faults.delay("/api/models/org/f1", 0.3, times=1)
    start = time.monotonic()
    assert request(hub_server, "GET", "/api/models/org/f1")[0] == 200
    assert time.monotonic() - start >= 0.3
    assert faults.pending() == []
