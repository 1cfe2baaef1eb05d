"""Hardening of `hft push` (issue 11): secrets in the commit text, Hub repo-id rules, symlinks out of the run.

Everything here is refused before the network: the subprocess cases run against the loopback Hub
(tests/hub_server.py) with a write token, so a missing check would show up as requests in its log (and a commit);
the in-process cases (typer's CliRunner on the app) cover the variants quickly. Runs are the fixed one of
tests/test_card.py (no training).
"""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from hftoolkit.cli import app
from tests.conftest import run_hft
from tests.hub_server import HubServer, hub_server  # noqa: F401  (fixture)
from tests.test_card import write_fixed_run

# Token-shaped (hf_ + 30 or more alphanumerics), assembled at run time so no token-shaped string is tracked.
SECRET = "_".join(["hf", "HardeningCommitMessageToken0123456789"])


def hft_cli(*args: str, **env: str):
    result = CliRunner().invoke(app, [str(a) for a in args], env=env or None)
    assert "Traceback" not in result.output
    return result


def hft_against(server: HubServer, *args):
    proc = run_hft(*args, env=server.env(), check=False)
    assert "Traceback" not in proc.stderr
    return proc


# ----------------------------------------------------------------------------------------------------------------------
# The commit's text is published: scanned like files, never echoed


def test_token_in_commit_message_is_refused_before_any_request(hub_server, tmp_path):  # noqa: F811
    run = write_fixed_run(tmp_path)
    proc = hft_against(hub_server, "push", run, "--repo-id", "org/reviews", "--commit-message", f"retrain with {SECRET}")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: refusing to push: --commit-message looks like it holds a Hugging Face access token")
    assert proc.stderr.count("\n") == 1
    assert SECRET not in proc.stdout + proc.stderr
    assert hub_server.requests == []
    assert hub_server.storage.list_repos("model") == []


@pytest.mark.parametrize(
    ("option", "value", "kind"),
    [
        ("--commit-message", "deploy\n\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaA==\n", "a PEM private key"),
        ("--commit-message", "notes\nAPI_KEY=s3cr3t-value\n", "an environment-file secret"),
        ("--commit-message", "hidden\0" + SECRET, "a Hugging Face access token"),
        ("--commit-message", "my session token is session-token-value-42", "the Hugging Face token of this session"),
        ("--revision", f"branch-{SECRET}", "a Hugging Face access token"),
    ],
)
def test_secrets_in_commit_text_are_refused_without_echo(tmp_path, option, value, kind):
    run = write_fixed_run(tmp_path)
    result = hft_cli("push", run, "--repo-id", "org/reviews", option, value, "--dry-run", HF_TOKEN="session-token-value-42")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: refusing to push: {option} looks like it holds {kind}")
    for secret in (SECRET, "s3cr3t-value", "b3BlbnNzaA==", "session-token-value-42"):
        assert secret not in result.output


def test_an_ordinary_commit_message_passes(tmp_path):
    result = hft_cli("push", write_fixed_run(tmp_path), "--repo-id", "org/reviews", "--commit-message", "Retrain: token budget 512", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "dry run: nothing was uploaded" in result.stdout


# ----------------------------------------------------------------------------------------------------------------------
# Repo ids: the Hub's rules, checked first, naming the rule


BAD_REPO_IDS = [
    ("org/name.git", "the name ends with '.git'"),
    ("org/x.ipynb", "the name ends with '.ipynb'"),
    ("a/b/c", "expected NAMESPACE/NAME with exactly one '/'"),
    ("name-only", "expected NAMESPACE/NAME with exactly one '/'"),
    ("org/--x", "the name contains '--'"),
    ("org/x..y", "the name contains '..'"),
    ("org/-x", "the name starts or ends with '-' or '.'"),
    ("org/" + "n" * 97, "the name is 97 characters long; the Hub allows at most 96"),
    ("org/na me", "the name has characters the Hub does not allow (' ')"),
    ("org/caf\u00e9", "the name has characters the Hub does not allow ('\u00e9')"),
    ("or g/name", "the namespace has characters the Hub does not allow (' ')"),
]


@pytest.mark.parametrize(("repo_id", "rule"), BAD_REPO_IDS, ids=[r for r, _ in BAD_REPO_IDS])
def test_invalid_repo_ids_are_refused_naming_the_rule(tmp_path, repo_id, rule):
    result = hft_cli("push", write_fixed_run(tmp_path), "--repo-id", repo_id, "--dry-run")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: --repo-id {repo_id!r} is not a valid Hub repo id: {rule}")
    assert result.stderr.count("\n") == 1


def test_invalid_repo_id_makes_no_request(hub_server, tmp_path):  # noqa: F811
    proc = hft_against(hub_server, "push", write_fixed_run(tmp_path), "--repo-id", "org/model.git")
    assert proc.returncode == 2
    assert "--repo-id 'org/model.git' is not a valid Hub repo id: the name ends with '.git'" in proc.stderr
    assert hub_server.requests == []


def test_token_pasted_as_repo_id_is_not_echoed(tmp_path):
    result = hft_cli("push", write_fixed_run(tmp_path), "--repo-id", f"{SECRET}/model", "--dry-run")
    assert result.exit_code == 2
    assert "--repo-id looks like a Hugging Face access token" in result.stderr and SECRET not in result.output


def test_the_hub_would_accept_what_passes():
    from huggingface_hub.utils import validate_repo_id

    from hftoolkit.repo_ids import repo_id_problem

    for ok in ("org/name", "Org-1/Foo-BAR_foo.bar123", "org/" + "n" * 96, "user/model.v2", "org/x.gitignore"):
        assert repo_id_problem(ok) is None, ok
        validate_repo_id(ok)
    for bad, _ in BAD_REPO_IDS:
        assert repo_id_problem(bad) is not None


# ----------------------------------------------------------------------------------------------------------------------
# Files from outside the run are never uploaded


def _link_out(tmp_path, link: str):
    """A fixed run whose `link` (relative to the run) is a symlink to a private file outside the run."""
    run = write_fixed_run(tmp_path)
    private = tmp_path / "home" / ".ssh" / "id_rsa"
    private.parent.mkdir(parents=True)
    private.write_text("not really a key, but private\n")
    (run / link).unlink(missing_ok=True)
    (run / link).symlink_to(private)
    return run, private


def test_symlink_out_of_the_run_is_refused_before_any_request(hub_server, tmp_path):  # noqa: F811
    run, private = _link_out(tmp_path, "model/vocab.txt")
    proc = hft_against(hub_server, "push", run, "--repo-id", "org/reviews")
    assert proc.returncode == 2, proc.stderr
    assert f"model/vocab.txt: a symlink to {private}, outside the run directory" in proc.stderr
    assert "not really a key" not in proc.stderr + proc.stdout
    assert hub_server.requests == []


@pytest.mark.parametrize("link", ["model/vocab.txt", "model/tokenizer.json", "eval_results.json", "loss_curve.png"])
def test_dry_run_refuses_links_out_of_the_run(tmp_path, link):
    run, private = _link_out(tmp_path, link)
    result = hft_cli("push", run, "--repo-id", "org/reviews", "--dry-run")
    assert result.exit_code == 2, result.output
    assert f"{link}: a symlink to {private}, outside the run directory" in result.stderr
    assert "nothing was uploaded" not in result.stdout


def test_model_folder_linked_from_elsewhere_is_refused(tmp_path):
    run = write_fixed_run(tmp_path)
    elsewhere = tmp_path / "elsewhere-model"
    (run / "model").rename(elsewhere)
    (run / "model").symlink_to(elsewhere, target_is_directory=True)
    result = hft_cli("push", run, "--repo-id", "org/reviews", "--dry-run")
    assert result.exit_code == 2
    assert f"model: a symlink to {elsewhere}, outside the run directory" in result.stderr


def test_link_inside_the_run_is_refused_naming_its_target(tmp_path):
    run = write_fixed_run(tmp_path)
    (run / "model" / "vocab.txt").symlink_to(run / "metrics.jsonl")
    result = hft_cli("push", run, "--repo-id", "org/reviews", "--dry-run")
    assert result.exit_code == 2
    assert "model/vocab.txt: a symlink to metrics.jsonl (publishing follows no links)" in result.stderr


def test_upload_list_checks_containment_itself(tmp_path):
    """build_uploads does not rely on the pre-flight: a link that appears after it is still refused."""
    from hftoolkit.errors import UnsafePathError
    from hftoolkit.publish.inspect import inspect_run
    from hftoolkit.publish.uploads import build_uploads

    run, private = _link_out(tmp_path, "model/tokenizer.json")
    facts = inspect_run(run, merge=False)
    with pytest.raises(UnsafePathError) as refused:
        build_uploads(facts, "org/reviews", facts.run.model, offline=True)
    assert f"{run / 'model' / 'tokenizer.json'} is a symlink to {private}" in str(refused.value)
    assert os.path.realpath(private) in str(refused.value)
