"""Units of hftoolkit/publish/ that the end-to-end push tests reach only through injected faults: Hub errors explained
by exception type, the merged-weights placeholder of a --merge dry run, secret scanning in safety.py, and the image
task's probe inputs for the merge check."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from hftoolkit.cli import app
from tests.test_card import write_fixed_run


def _response(status: int):
    import httpx2

    return httpx2.Response(status, request=httpx2.Request("POST", "https://hub.example/api/models/org/x/commit/main"))


def test_hub_errors_are_explained_by_type_not_text():
    import httpx2
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    from hftoolkit.publish.hub_commit import hub_problem

    # Messages that would mislead a text match: the type and status decide.
    assert "gated" in hub_problem(GatedRepoError("404 connection", response=_response(403)))
    assert "does not exist" in hub_problem(RepositoryNotFoundError("connection refused", response=_response(404)))
    assert "HTTP 403" in hub_problem(HfHubHTTPError("404 not found", response=_response(403)))
    assert "HTTP 503" in hub_problem(HfHubHTTPError("ok", response=_response(503)))
    assert "HF_HUB_OFFLINE" in hub_problem(OfflineModeIsEnabled("whatever"))
    # huggingface_hub wraps a failed LFS upload in a RuntimeError raised from the transport error.
    try:
        try:
            raise httpx2.RemoteProtocolError("peer closed")
        except httpx2.RemoteProtocolError as inner:
            raise RuntimeError("Error while uploading 'a.safetensors' to the Hub.") from inner
    except RuntimeError as wrapped:
        assert hub_problem(wrapped) == "the connection to the Hub failed (RemoteProtocolError)"
    # Not a Hub failure, whatever its text says: it must surface as the bug it is.
    assert hub_problem(ValueError("404 connection error")) is None
    assert hub_problem(FileNotFoundError("connection")) is None


def test_merge_dry_run_lists_pending_weights_without_bytes(tmp_path):
    from hftoolkit.commands.push import push
    from hftoolkit.errors import PushError

    result = push(write_fixed_run(tmp_path), "org/merged", merge=True, dry_run=True)
    pending = [u for u in result.uploads if u.pending_merge]
    assert [u.path_in_repo for u in pending] == ["model.safetensors"]
    with pytest.raises(PushError, match="merged at push time"):
        pending[0].read()
    out = CliRunner().invoke(app, ["push", str(tmp_path / "run"), "--repo-id", "org/merged", "--merge", "--dry-run"])
    assert out.exit_code == 0, out.output
    assert re.search(r"^  model\.safetensors +\(merged\)  merged at push time", out.stdout, flags=re.M)


def test_secret_scanning_lives_in_safety():
    from hftoolkit.safety import is_secret_file_name, secret_kind

    assert secret_kind(b"API_KEY=abc\n").startswith("an environment-file secret")
    assert secret_kind(b"-----BEGIN RSA PRIVATE KEY-----\n") == "a PEM private key"
    assert secret_kind(b"\0binary API_KEY=abc") is None  # weights and images are not scanned
    assert secret_kind(b"max_tokens = 512\n") is None
    assert all(is_secret_file_name(n) for n in (".env.local", "ID_RSA", "server.pem", ".netrc"))
    assert not is_secret_file_name("environment.yaml")


def test_image_task_probes_with_images(tmp_path):
    from transformers import AutoImageProcessor

    from hftoolkit.tasks.registry import get_task
    from tests.fixtures import build_tiny_vit

    processor = AutoImageProcessor.from_pretrained(build_tiny_vit(tmp_path / "vit"))
    probe = get_task("image-classification").probe_inputs(processor, max_length=32)
    assert len(probe) == 3 and all(tuple(x["pixel_values"].shape) == (1, 3, 32, 32) for x in probe)
    again = get_task("image-classification").probe_inputs(processor, max_length=32)
    assert all((a["pixel_values"] == b["pixel_values"]).all() for a, b in zip(probe, again))  # fixed inputs
