"""`hft push RUN --with-onnx EXPORT_DIR` against the loopback Hub (tests/hub_server.py): the export lands under `onnx/`
in the same single commit, and the model card gets an ONNX section with the parity and metric table.

The run is written from fixed JSON (tests/test_card.py) and the export folder from a fixed ExportReport through the
export's own writer (deploy/report.py), so nothing trains: `hft export` itself is tested in tests/test_export.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from hftoolkit.deploy.report import MODEL, MODEL_INT8, README, REPORT, ExportReport, MetricRow, Parity, file_sizes, write_report
from tests.conftest import run_hft
from tests.hub_server import HubServer, hub_server  # noqa: F401  (fixture)
from tests.test_card import write_fixed_run

RUN_ID = "run-0123"
MAX_ABS_DIFF = 3.25e-7
METRICS = {"pytorch-fp32": 0.85, "onnx-fp32": 0.85, "onnx-int8": 0.8333}


def fixed_run(root: Path) -> Path:
    run = write_fixed_run(root)
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "run_id": RUN_ID}, indent=2))
    return run


def fixed_export(folder: Path, run_id: str = RUN_ID) -> Path:
    """An export folder as `hft export --quantize int8` lays it out (graph bytes are placeholders: push only copies)."""
    folder.mkdir(parents=True)
    (folder / MODEL).write_bytes(b"\x08\x09onnx-graph" * 64)
    (folder / MODEL_INT8).write_bytes(b"\x08\x09int8-graph" * 16)
    # As the run's model config: transformers stamped the folder it was loaded from.
    (folder / "config.json").write_text(json.dumps({"id2label": {"0": "negative", "1": "positive"}, "_name_or_path": str(folder.parent / "tiny-bert")}))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "WordPiece"}}))
    (folder / README).write_text("# ONNX export of run (text-classification)\n")
    report = ExportReport(
        task="text-classification", source="run", run_id=run_id, opset=18, opset_requested=None,
        inputs=["input_ids", "token_type_ids", "attention_mask"], labels=["negative", "positive"], split="test",
        parity=Parity(MAX_ABS_DIFF, 1.0, 60, "examples"), max_diff=1e-4, parity_int8=Parity(0.02, 0.98, 60, "examples"),
        metrics=[MetricRow(name, {"accuracy": value}) for name, value in METRICS.items()], checked_metric="accuracy",
        metric_drop_points=1.67, max_drop=2.0,
    )
    report.files = file_sizes(folder)
    write_report(folder, report)
    return folder


def hft(server: HubServer, *args, check: bool = True, **env):
    return run_hft(*args, env={**server.env(), **env}, check=check)


def commits(server: HubServer) -> list[str]:
    return [path for method, path in server.requests if method == "POST" and "/commit/" in path]


def test_push_with_onnx_adds_the_export_under_onnx_in_one_commit(hub_server, tmp_path):  # noqa: F811
    run, export = fixed_run(tmp_path), fixed_export(tmp_path / "export")
    proc = hft(hub_server, "push", run, "--repo-id", "org/reviews", "--with-onnx", export)
    assert "pushed adapter to org/reviews@main" in proc.stdout
    assert len(commits(hub_server)) == 1
    files = hub_server.files("org/reviews")
    assert {f"onnx/{p.name}" for p in export.iterdir()} == {p for p in files if p.startswith("onnx/")}
    for name in (MODEL, MODEL_INT8, REPORT, README, "tokenizer.json"):
        assert files[f"onnx/{name}"] == (export / name).read_bytes()
    assert {"adapter_model.safetensors", "README.md", "manifest.json"} <= set(files)  # the run's files as ever
    config = json.loads(files["onnx/config.json"])
    assert config["_name_or_path"] == "tiny-bert" and str(tmp_path) not in files["onnx/config.json"].decode()

    card = files["README.md"].decode()
    section = card.split("## ONNX\n", 1)[1].split("\n## ", 1)[0]
    sizes = {name: (export / name).stat().st_size for name in (MODEL, MODEL_INT8)}
    assert f"`onnx/model.onnx` ({sizes[MODEL]:,} bytes), `onnx/model.int8.onnx` ({sizes[MODEL_INT8]:,} bytes)" in section
    assert "opset 18" in section
    assert f"Parity with PyTorch on 60 examples of the test split: max |logit difference| {MAX_ABS_DIFF:.2e} (allowed 0.0001), argmax agreement 100.0%" in section
    assert "| runtime | accuracy |\n|---|---|\n" in section
    for name, value in METRICS.items():
        assert f"| {name} | {value:.4f} |" in section
    assert "int8 drop against PyTorch fp32: 1.67 points." in section
    assert card.index("## Evaluation results") < card.index("## ONNX") < card.index("## Framework versions")


def test_dry_run_lists_the_export_and_a_card_without_onnx_has_no_section(hub_server, tmp_path):  # noqa: F811
    run, export = fixed_run(tmp_path), fixed_export(tmp_path / "export")
    out = hft(hub_server, "push", run, "--repo-id", "org/reviews", "--dry-run", "--with-onnx", export, HF_HUB_OFFLINE="1").stdout
    listed = [line.split()[0] for line in out.split("--- ", 1)[1].splitlines()[1:] if line.startswith("  ")]
    assert [p for p in listed if p.startswith("onnx/")] == sorted(f"onnx/{p.name}" for p in export.iterdir())
    assert "## ONNX" in out
    plain = hft(hub_server, "push", run, "--repo-id", "org/reviews", "--dry-run", HF_HUB_OFFLINE="1").stdout
    assert "## ONNX" not in plain and "onnx/" not in plain
    assert hub_server.requests == []


def test_an_export_of_another_run_or_an_incomplete_one_is_refused_before_upload(hub_server, tmp_path):  # noqa: F811
    run = fixed_run(tmp_path)
    other = fixed_export(tmp_path / "other", run_id="run-9999")
    proc = hft(hub_server, "push", run, "--repo-id", "org/reviews", "--with-onnx", other, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"--with-onnx {other} is an export of run (text-classification), not of the run run being pushed" in proc.stderr

    broken = fixed_export(tmp_path / "broken")
    (broken / MODEL_INT8).unlink()
    proc = hft(hub_server, "push", run, "--repo-id", "org/reviews", "--with-onnx", broken, check=False)
    assert proc.returncode == 2 and "model.int8.onnx listed in export_report.json but missing" in proc.stderr, proc.stderr

    pickled = fixed_export(tmp_path / "pickled")
    (pickled / "extra.pkl").write_bytes(b"\x80\x04K\x01.")
    proc = hft(hub_server, "push", run, "--repo-id", "org/reviews", "--with-onnx", pickled, check=False)
    assert proc.returncode == 2 and "extra.pkl: a pickle file" in proc.stderr, proc.stderr
    assert hub_server.requests == []  # every refusal came before the network
