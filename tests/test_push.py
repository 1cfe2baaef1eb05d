"""`hft push` and Hub repo ids in `finetune` / `evaluate`, end to end against the loopback Hub (tests/hub_server.py).

Every command runs the real CLI in a subprocess with `HubServer.env()` (HF_ENDPOINT, its own HF cache and token).
Two groups:
- refusals and --dry-run on a run directory written from fixed JSON (no training; each test is one short process);
- round trips on one tiny BERT fine-tuned in this module from a Hub model and a Hub parquet dataset seeded on the
  server (marked slow): push adapter / merged with --verify, `hft evaluate org/name`, no-op re-push, branches and
  PRs, injected faults, and a sentinel token that must appear nowhere.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import run_hft
from tests.hub_server import HubServer, hub_server  # noqa: F401  (fixture)
from tests.test_card import write_fixed_run

# Shaped like a real token (hf_ + 34 alphanumerics) so every scanner that looks for tokens would see it.
# Assembled at run time so no token-shaped string is tracked in the repository (secret scanners flag those).
SENTINEL = "_".join(["hf", "SentinelTokenForHftPushTests0123456789"])
OUTPUTS: list[str] = []  # stdout and stderr of every command run against the module's server


def hft(server: HubServer, *args, check: bool = True, token: str | bool | None = True, **env):
    proc = run_hft(*args, env={**server.env(token=token), **env}, check=check)
    OUTPUTS.extend([proc.stdout, proc.stderr])
    return proc


def printed_metrics(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"^  (\w+)\s+(-?\d+\.\d{4})$", stdout, flags=re.M))


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def text_files(files: dict[str, bytes]) -> dict[str, str]:
    return {p: d.decode("utf-8") for p, d in files.items() if b"\0" not in d[:8192] and not p.endswith(".png")}


# ----------------------------------------------------------------------------------------------------------------------
# Refusals and --dry-run: a run directory from fixed JSON, no training


def test_dry_run_prints_card_and_exact_files_without_network(hub_server, tmp_path):  # noqa: F811
    run = write_fixed_run(tmp_path)
    proc = hft(hub_server, "push", run, "--repo-id", "org/reviews", "--dry-run", HF_HUB_OFFLINE="1")
    out = proc.stdout
    assert out.startswith("---\nbase_model: org/tiny-bert\n")
    assert "# reviews" in out and "model-index:" in out
    listed = re.findall(r"^  (\S+)\s+[\d,]+ B  ", out, flags=re.M)
    assert listed == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "config.json", "eval_results.json",
        "loss_curve.png", "manifest.json", "recipe.resolved.yaml", "tokenizer.json", "tokenizer_config.json",
    ]
    not_published = out.split("not published: ", 1)[1].splitlines()[0]
    for name in ("model/README.md", "checkpoints/", "tensorboard/", "metrics.jsonl", "train_results.json"):
        assert name in not_published
    assert "dry run: nothing was uploaded" in out
    assert str(tmp_path) not in out
    assert hub_server.requests == []
    # Same run, same output: nothing in the card or the list depends on time or place.
    assert hft(hub_server, "push", run, "--repo-id", "org/reviews", "--dry-run", HF_HUB_OFFLINE="1").stdout == out


def test_env_file_pickle_and_key_are_refused_by_name(hub_server, tmp_path):  # noqa: F811
    run = write_fixed_run(tmp_path)
    (run / ".env").write_text(f"HF_TOKEN={SENTINEL}\n")
    (run / "notes").mkdir()
    (run / "notes" / "deploy.txt").write_text("use this:\n-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n")
    (run / "notes" / "settings.cfg").write_text("# local settings\nexport DB_PASSWORD=hunter2\n")
    (run / "model" / "training_args.bin").write_bytes(b"\x80\x04\x95" + b"\0" * 20)
    proc = hft(hub_server, "push", run, "--repo-id", "org/reviews", check=False)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr
    assert err.startswith("error: refusing to push") and "Traceback" not in err
    for name in (".env", "notes/deploy.txt", "notes/settings.cfg", "model/training_args.bin"):
        assert name in err
    assert "PEM private key" in err and "environment-file secret" in err and "pickle" in err
    assert "checkpoints" not in err  # Trainer checkpoints hold pickles by design and are never published
    assert SENTINEL not in err and "hunter2" not in err
    assert hub_server.requests == []  # refused before any network call


def test_secret_in_a_published_file_is_refused(hub_server, tmp_path):  # noqa: F811
    run = write_fixed_run(tmp_path)
    config = json.loads((run / "model" / "tokenizer_config.json").read_text())
    (run / "model" / "tokenizer_config.json").write_text(json.dumps({**config, "auth": SENTINEL}))
    proc = hft(hub_server, "push", run, "--repo-id", "org/reviews", "--dry-run", check=False)
    assert proc.returncode == 2
    assert "model/tokenizer_config.json: looks like a Hugging Face access token" in proc.stderr
    assert SENTINEL not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("labels", "LABEL_0, LABEL_1 are placeholders"),
        ("no_eval", "run `hft evaluate"),
        ("no_license", "model.license"),
        ("local_base", "is not a Hub repo"),
    ],
)
def test_run_problems_are_refused_before_upload(hub_server, tmp_path, change, message):  # noqa: F811
    run = write_fixed_run(tmp_path, model={"license": None} if change == "no_license" else {})
    if change == "labels":
        manifest = json.loads((run / "manifest.json").read_text())
        (run / "manifest.json").write_text(json.dumps({**manifest, "labels": ["LABEL_0", "LABEL_1"]}))
    elif change == "no_eval":
        (run / "eval_results.json").unlink()
    elif change == "local_base":
        recipe = yaml.safe_load((run / "recipe.resolved.yaml").read_text())
        recipe["model"]["name"] = str(tmp_path)
        (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe))
    proc = hft(hub_server, "push", run, "--repo-id", "org/reviews", check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not any(method == "POST" and "/commit/" in path for method, path in hub_server.requests)


def test_tokens_are_refused_on_the_command_line_in_recipes_and_when_missing(hub_server, tmp_path):  # noqa: F811
    run = write_fixed_run(tmp_path)
    proc = hft(hub_server, "push", run, "--repo-id", "org/reviews", "--token", SENTINEL, check=False)
    assert proc.returncode == 2 and "HF_TOKEN" in proc.stderr and SENTINEL not in proc.stderr

    recipe = yaml.safe_load((run / "recipe.resolved.yaml").read_text())
    recipe["dataset"]["name"] = SENTINEL
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    proc = hft(hub_server, "validate", tmp_path / "r.yaml", check=False)
    assert proc.returncode == 2 and "dataset.name" in proc.stderr and "access token" in proc.stderr
    assert SENTINEL not in proc.stderr

    proc = hft(hub_server, "push", run, "--repo-id", "org/reviews", token=None, check=False)
    assert proc.returncode == 2 and "no Hugging Face token" in proc.stderr
    assert hub_server.requests == []


# ----------------------------------------------------------------------------------------------------------------------
# Round trips on a model fine-tuned from Hub ids


def _parquet(rows: list[dict], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tiny_bert, reviews):
    """The module's server (token: SENTINEL) with org/tiny-bert (main + a `release` branch carrying a card with a
    license) and the parquet dataset org/ds in two versions (v1 has the full splits, main only 50 train rows)."""
    tmp = tmp_path_factory.mktemp("hub-data")
    server = HubServer(tmp_path_factory.mktemp("hub"), SENTINEL).start()
    server.seed_repo("org/tiny-bert", {p.name: p for p in tiny_bert.iterdir() if p.is_file()})
    release = server.seed_repo(
        "org/tiny-bert", {"README.md": "---\nlicense: apache-2.0\nlanguage: en\n---\n# tiny-bert\n"}, branch="release"
    )
    rows = {s: [json.loads(x) for x in reviews[s].read_text().splitlines()] for s in ("train", "validation", "test")}
    v1 = server.seed_repo(
        "org/ds", {f"data/{s}-00000-of-00001.parquet": _parquet(r, tmp / "v1" / f"{s}.parquet") for s, r in rows.items()},
        repo_type="dataset",
    )
    server.seed_repo(
        "org/ds", {"data/train-00000-of-00001.parquet": _parquet(rows["train"][:50], tmp / "v2" / "train.parquet")},
        repo_type="dataset",
    )
    yield SimpleNamespace(server=server, release=release, data_v1=v1)
    server.stop()
    assert not server.errors, server.errors


@pytest.fixture(scope="module")
def trained(hub, tmp_path_factory):
    """finetune from Hub ids (model at a branch, dataset at a commit), then the local `hft evaluate`."""
    tmp = tmp_path_factory.mktemp("push-run")
    recipe = {
        "task": "text-classification",
        "model": {"name": "org/tiny-bert", "revision": "release"},
        "dataset": {"name": "org/ds", "revision": hub.data_v1, "columns": {"text": "text", "label": "label"}, "max_length": 32},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 5e-3, "logging_steps": 2, "report_to": ["none"], "seed": 7},
        "output_dir": str(tmp / "run"),
    }
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    hft(hub.server, "finetune", tmp / "recipe.yaml")
    evaluated = hft(hub.server, "evaluate", tmp / "run")
    return SimpleNamespace(run=tmp / "run", metrics=printed_metrics(evaluated.stdout))


@pytest.fixture(scope="module")
def adapter_push(hub, trained):
    before = tree_digest(trained.run)
    proc = hft(hub.server, "push", trained.run, "--repo-id", "org/reviews-adapter", "--verify")
    return SimpleNamespace(proc=proc, run_before=before)


@pytest.mark.slow
def test_finetune_from_hub_ids_records_the_resolved_commits(hub, trained):
    manifest = json.loads((trained.run / "manifest.json").read_text())
    assert manifest["model"] == {"name": "org/tiny-bert", "revision": "release", "commit": hub.release}
    assert manifest["dataset"]["id"] == "org/ds"
    assert manifest["dataset"]["revision"] == manifest["dataset"]["commit"] == hub.data_v1
    # v1 of the dataset, not main (whose train split has 50 rows)
    assert json.loads((trained.run / "data_report.json").read_text())["split_sizes"] == {"train": 200, "validation": 60, "test": 60}
    assert set(trained.metrics) == {"loss", "accuracy", "f1"}


@pytest.mark.slow
def test_adapter_push_verifies_and_evaluates_from_the_hub(hub, trained, adapter_push):
    from huggingface_hub import ModelCard

    server, out = hub.server, adapter_push.proc.stdout
    assert "pushed adapter to org/reviews-adapter@main" in out
    assert "10 files downloaded intact" in out and "predictions on 4 inputs match the local run" in out
    files = server.files("org/reviews-adapter")
    assert set(files) == {
        ".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors", "config.json",
        "eval_results.json", "loss_curve.png", "manifest.json", "recipe.resolved.yaml", "tokenizer.json",
        "tokenizer_config.json",
    }
    assert tree_digest(trained.run) == adapter_push.run_before  # push never writes into the run directory
    adapter_config = json.loads(files["adapter_config.json"])
    assert (adapter_config["base_model_name_or_path"], adapter_config["revision"]) == ("org/tiny-bert", hub.release)
    published = yaml.safe_load(files["recipe.resolved.yaml"])
    assert published["model"]["revision"] == hub.release and published["output_dir"] == "run"
    for path, text in text_files(files).items():
        assert str(trained.run.parent) not in text and "/tmp/" not in text, path

    card = ModelCard(files["README.md"].decode())
    assert card.data.base_model == "org/tiny-bert" and card.data.library_name == "peft"
    assert card.data.license == "apache-2.0" and card.data.language == "en"  # from the base model's card
    assert card.data.datasets == ["org/ds"]
    results = {r.metric_type: r for r in card.data.eval_results}
    assert {k: f"{r.metric_value:.4f}" for k, r in results.items()} == {k: v for k, v in trained.metrics.items() if k != "loss"}
    assert results["accuracy"].dataset_revision == hub.data_v1 and results["accuracy"].dataset_split == "test"

    evaluated = hft(server, "evaluate", "org/reviews-adapter")
    assert "test split, 60 examples" in evaluated.stdout
    assert printed_metrics(evaluated.stdout) == trained.metrics
    predicted = hft(server, "predict", "org/reviews-adapter", "the kettle works perfectly.")
    assert predicted.stdout.split("\t")[0] in {"negative", "positive"}

    head = server.head("org/reviews-adapter")
    server.clear_log()
    again = hft(server, "push", trained.run, "--repo-id", "org/reviews-adapter")
    assert "nothing to push" in again.stdout
    assert server.head("org/reviews-adapter") == head
    assert not any("/commit/" in path for _, path in server.requests)


@pytest.mark.slow
def test_merged_push_checks_logits_verifies_and_evaluates(hub, trained):
    from huggingface_hub import ModelCard

    server = hub.server
    hft(server, "push", trained.run, "--repo-id", "org/reviews-merged")  # an adapter first: --merge must replace it
    proc = hft(server, "push", trained.run, "--repo-id", "org/reviews-merged", "--merge", "--verify")
    assert re.search(r"merged logits match the adapter's on 4 inputs \(max \|diff\| \S+, allowed 0.0001 in float32\)", proc.stdout)
    assert "2 removed" in proc.stdout and "predictions on 4 inputs match the local run" in proc.stdout
    files = server.files("org/reviews-merged")
    assert "model.safetensors" in files and "adapter_config.json" not in files and "adapter_model.safetensors" not in files
    assert json.loads(files["config.json"])["architectures"] == ["BertForSequenceClassification"]
    assert json.loads(files["config.json"])["id2label"] == {"0": "negative", "1": "positive"}
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "transformers" and card.data.base_model == "org/tiny-bert"
    assert json.loads(files["manifest.json"])["published_as"] == "merged"

    merged = printed_metrics(hft(server, "evaluate", "org/reviews-merged").stdout)
    assert {k: merged[k] for k in ("accuracy", "f1")} == {k: trained.metrics[k] for k in ("accuracy", "f1")}
    assert abs(float(merged["loss"]) - float(trained.metrics["loss"])) <= 1e-4


@pytest.mark.slow
def test_branch_and_pull_request_leave_main_alone(hub, trained):
    server = hub.server
    hft(server, "push", trained.run, "--repo-id", "org/branchy", "--revision", "experiments")
    assert "README.md" in server.files("org/branchy", "experiments")
    assert set(server.files("org/branchy")) == {".gitattributes"}
    proc = hft(server, "push", trained.run, "--repo-id", "org/branchy", "--create-pr", "--commit-message", "Try the adapter")
    assert "/discussions/1" in proc.stdout
    assert "adapter_model.safetensors" in server.files("org/branchy", "refs/pr/1")
    assert set(server.files("org/branchy")) == {".gitattributes"}


def licensed_copy(run: Path, tmp: Path) -> Path:
    """The trained run, with the license in its recipe: fault tests push to a fresh server (so uploads really
    happen), where the base model's card that states the license does not exist."""
    import shutil

    copy = tmp / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    recipe = yaml.safe_load((copy / "recipe.resolved.yaml").read_text())
    recipe["model"]["license"] = "apache-2.0"
    (copy / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return copy


@pytest.mark.slow
def test_transient_503s_are_retried(trained, hub_server, tmp_path):  # noqa: F811
    run = licensed_copy(trained.run, tmp_path)
    hub_server.faults.fail_next("/api/models/org/flaky/preupload/", 503, times=2)
    hub_server.faults.fail_next("/lfs-upload/", 503, times=2)
    proc = run_hft("push", run, "--repo-id", "org/flaky", env=hub_server.env())
    assert "pushed adapter" in proc.stdout
    assert [r.status for r in hub_server.log if "/org/flaky/preupload/" in r.path] == [503, 503, 200]
    assert [r.status for r in hub_server.log if "/lfs-upload/" in r.path][:3] == [503, 503, 200]
    assert "adapter_model.safetensors" in hub_server.files("org/flaky")


@pytest.mark.slow
def test_dropped_upload_leaves_repo_and_run_unchanged_and_rerun_completes(trained, hub_server, tmp_path):  # noqa: F811
    run = licensed_copy(trained.run, tmp_path)
    head = hub_server.seed_repo("org/dropped", {"notes.md": "kept\n"})
    before = tree_digest(run)
    hub_server.faults.drop_connections("/lfs-upload/")
    proc = run_hft("push", run, "--repo-id", "org/dropped", env=hub_server.env(), check=False)
    assert proc.returncode == 2, proc.stderr
    assert "push failed" in proc.stderr and f"org/dropped@main is unchanged (still at {head[:12]})" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert hub_server.head("org/dropped") == head and set(hub_server.files("org/dropped")) == {".gitattributes", "notes.md"}
    assert tree_digest(run) == before

    hub_server.faults.clear()
    proc = run_hft("push", run, "--repo-id", "org/dropped", env=hub_server.env())
    assert "pushed adapter" in proc.stdout
    assert {"notes.md", "adapter_model.safetensors", "README.md"} <= set(hub_server.files("org/dropped"))


@pytest.fixture(scope="module")
def dpo_trained(hub, tmp_path_factory):
    """DPO (TRL) on a 4-bit base (QLoRA) of the tiny Llama served as org/tiny-llama, then the local `hft evaluate`."""
    from tests.fixtures import build_tiny_llama, causal_lm_recipe, lm_preference_data

    tmp = tmp_path_factory.mktemp("dpo-run")
    llama = build_tiny_llama(tmp / "llama")
    hub.server.seed_repo("org/tiny-llama", {p.name: p for p in llama.iterdir() if p.is_file()})
    recipe = causal_lm_recipe(
        tmp / "recipe.yaml", llama, lm_preference_data(tmp / "pairs", {"train": 16, "validation": 8, "test": 8}),
        tmp / "run", model={"name": "org/tiny-llama", "license": "apache-2.0", "quantization": {"bits": 4}},
        dataset={"columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}, "max_length": 64},
        training={"objective": "dpo", "max_steps": 2, "batch_size": 8, "learning_rate": 5e-3, "logging_steps": 1,
                  "report_to": ["none"], "save_strategy": "no"},
    )
    hft(hub.server, "finetune", recipe)
    hft(hub.server, "evaluate", tmp / "run")
    scored = json.loads((tmp / "run" / "eval_results.json").read_text())["metrics"]
    return SimpleNamespace(run=tmp / "run", metrics={k: f"{v:.4f}" for k, v in scored.items()})


@pytest.mark.slow
def test_dpo_qlora_adapter_push_verifies_and_the_card_says_how_it_was_trained(hub, dpo_trained):
    from huggingface_hub import ModelCard

    server = hub.server
    assert {"rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"} <= set(dpo_trained.metrics)
    proc = hft(server, "push", dpo_trained.run, "--repo-id", "org/llama-dpo", "--verify")
    assert "pushed adapter to org/llama-dpo@main" in proc.stdout and "predictions on 4 inputs match" in proc.stdout
    files = server.files("org/llama-dpo")
    card = ModelCard(files["README.md"].decode())
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert {k: f"{v:.4f}" for k, v in results.items()} == {k: v for k, v in dpo_trained.metrics.items() if k != "loss"}
    text = files["README.md"].decode()
    assert "trained on the base model loaded 4-bit through bitsandbytes (QLoRA): load the base that way" in text
    assert 'quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"' in text
    assert "| objective | dpo (TRL DPOTrainer) |" in text and "| base model loaded | 4-bit nf4, double quantization" in text
    assert "Trained with TRL's `DPOTrainer`." in text

    # --merge of a QLoRA run (dequantized base, looser stated tolerance): tests/test_qlora.py, in process.


@pytest.mark.slow
def test_sentinel_token_appears_nowhere(hub, trained, adapter_push):
    assert OUTPUTS and all(SENTINEL not in text for text in OUTPUTS)
    needle = SENTINEL.encode()
    for path in trained.run.rglob("*"):
        assert not path.is_file() or needle not in path.read_bytes(), path
    # every object the server stored (all uploads to every repo) and the client's whole HF cache
    for folder in (hub.server.storage.objects, hub.server.client_home):
        for path in folder.rglob("*"):
            assert not path.is_file() or needle not in path.read_bytes(), path
    assert SENTINEL not in hub.server.files("org/reviews-adapter")["README.md"].decode()
