"""`hft export RUN --onnx OUT`: a parity-checked ONNX export of the merged model, int8 with its metric table, and
every refusal leaving nothing behind (tiny BERT text classifier and tiny Llama chat run, through the real CLI)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from hftoolkit.deploy.report import MODEL, MODEL_INT8, REPORT, onnx_publication, read_report
from hftoolkit.errors import ExportError, UnsafePathError
from tests.deploy_fixtures import chat_export, chat_run, hft, hft_fails, predict_json, text_export, text_run


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert, reviews):
    return text_run(tmp_path_factory, tiny_bert, reviews)


@pytest.fixture(scope="module")
def export(tmp_path_factory, run):
    return text_export(tmp_path_factory, run)


def no_leftovers(folder):
    """Nothing of a refused export remains: no OUT_DIR, no staging folder."""
    return [p.name for p in folder.iterdir() if ".export-" in p.name or p.name == "out"] == []


def test_export_writes_onnx_int8_and_a_report(run, export):
    assert {MODEL, MODEL_INT8, REPORT, "README.md", "config.json", "tokenizer.json"} <= {p.name for p in export.iterdir()}
    assert json.loads((export / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}
    report = read_report(export)
    assert report.task == "text-classification" and report.source == run.name and report.split == "test"
    assert report.opset >= 18 and report.inputs == ["input_ids", "token_type_ids", "attention_mask"]
    assert report.parity.examples == 60 and report.parity.compared == "examples"
    assert report.parity.max_abs_diff <= 1e-4 and report.parity.argmax_agreement == 1.0
    assert report.parity_int8 is not None and report.parity_int8.max_abs_diff > report.parity.max_abs_diff
    # The metric table: the whole test split scored by PyTorch fp32, ONNX fp32 and ONNX int8.
    table = {row.runtime: row.metrics for row in report.metrics}
    assert list(table) == ["pytorch-fp32", "onnx-fp32", "onnx-int8"] and all(set(m) == {"accuracy", "f1"} for m in table.values())
    assert table["onnx-fp32"] == table["pytorch-fp32"]
    drop = (table["pytorch-fp32"]["accuracy"] - table["onnx-int8"]["accuracy"]) * 100
    assert report.checked_metric == "accuracy" and report.metric_drop_points == pytest.approx(drop) and not report.forced
    assert {(row.runtime, row.batch) for row in report.latency} == {(r, b) for r in table for b in (1, 32)}
    assert all(0 < row.p50_ms <= row.p95_ms for row in report.latency)
    assert report.files == {p.name: p.stat().st_size for p in export.iterdir() if p.name != REPORT}
    assert {"torch", "transformers", "onnx", "onnxruntime", "onnxscript"} <= set(report.versions)
    # Dynamic int8 quantization really happened, and the run directory still holds only its adapter.
    import onnx

    ops = {node.op_type for node in onnx.load(str(export / MODEL_INT8)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & ops, ops
    assert (run / "model" / "adapter_model.safetensors").is_file() and not (run / "model" / "model.safetensors").exists()


def test_readme_snippet_runs_with_onnxruntime_and_tokenizers_alone(run, export):
    code = re.search(r"```python\n(.*?)```", (export / "README.md").read_text(), re.S).group(1)
    code += "\nimport sys\nassert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=export, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    texts = [text for _, _, text in rows]
    assert texts == ["this works well.", "it broke after a day."]
    expected = predict_json(run, *texts)
    assert [label for label, _, _ in rows] == [r["label"] for r in expected]
    assert [float(score) for _, score, _ in rows] == pytest.approx([r["score"] for r in expected], abs=1e-4)


def test_parity_over_max_diff_is_refused_and_nothing_is_written(run, tmp_path):
    result = hft_fails("export", run, "--onnx", tmp_path / "out", "--max-diff", "0")
    assert re.search(r"parity check failed: .* differ by up to \S+ on 60 'test' examples .* over --max-diff 0; nothing was written", result.stderr)
    assert no_leftovers(tmp_path)


def test_int8_drop_over_max_drop_is_refused_unless_forced(run, export, tmp_path, monkeypatch):
    """A tampered int8 model (its logits negated) loses accuracy for real: refused; --force writes it, replacing
    the earlier export in OUT_DIR as a whole."""
    import onnx
    from onnx import helper

    from hftoolkit.deploy import quantize

    real = quantize.quantize_int8

    def tampered(source, target):
        real(source, target)
        model = onnx.load(str(target))
        for node in model.graph.node:
            node.output[:] = ["raw_logits" if name == "logits" else name for name in node.output]
        model.graph.node.append(helper.make_node("Neg", ["raw_logits"], ["logits"]))
        onnx.save(model, str(target))

    monkeypatch.setattr(quantize, "quantize_int8", tampered)
    out = tmp_path / "out"
    shutil.copytree(export, out)
    before = (out / MODEL_INT8).read_bytes()
    result = hft_fails("export", run, "--onnx", out, "--quantize", "int8")
    assert re.search(r"int8 quantization costs [\d.]+ points of accuracy \(pytorch-fp32 [\d.]+; onnx-fp32 .*; onnx-int8 .*\), more "
                     r"than --max-drop 1; nothing was written", result.stderr), result.stderr
    assert (out / MODEL_INT8).read_bytes() == before  # the earlier export is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out"]

    hft("export", run, "--onnx", out, "--quantize", "int8", "--force")
    report = read_report(out)
    assert report.forced and report.metric_drop_points > 1 and (out / MODEL_INT8).read_bytes() != before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_out_dir_holding_something_else_is_refused_and_kept(run, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("mine")
    result = hft_fails("export", run, "--onnx", out)
    assert f"--onnx {out} is not empty and holds no hft export" in result.stderr and "never overwritten" in result.stderr
    assert [p.name for p in out.iterdir()] == ["todo.txt"] and (out / "todo.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    assert "exists and is not a directory" in hft_fails("export", run, "--onnx", tmp_path / "file").stderr


def test_unfinished_run_is_refused(run, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(run / "recipe.resolved.yaml", unfinished)
    (unfinished / "manifest.json").write_text(json.dumps({"status": "running"}))
    result = hft_fails("export", unfinished, "--onnx", tmp_path / "out")
    assert "has not finished training (status: running)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_architecture_the_exporter_rejects_is_named(run, tmp_path, monkeypatch):
    import torch

    def reject(*args, **kwargs):
        raise torch.onnx.errors.OnnxExporterError("aten::made_up is not supported")

    monkeypatch.setattr(torch.onnx, "export", reject)
    result = hft_fails("export", run, "--onnx", tmp_path / "out")
    assert "BertForSequenceClassification (model type 'bert') cannot be exported to ONNX" in result.stderr
    assert "OnnxExporterError: aten::made_up is not supported" in result.stderr
    assert no_leftovers(tmp_path)


def test_causal_lm_exports_logits_of_a_forward_pass(tmp_path_factory):
    out = chat_export(tmp_path_factory, chat_run(tmp_path_factory))
    report = read_report(out)
    assert report.task == "causal-lm" and report.opset >= 18 and report.inputs == ["input_ids", "attention_mask"]
    assert report.parity.compared == "tokens" and report.parity.max_abs_diff <= 1e-4 and report.parity.argmax_agreement == 1.0
    assert report.metrics == [] and report.parity_int8 is None
    readme = (out / "README.md").read_text()
    assert "no KV cache" in readme and "vLLM, TGI or" in readme and "hft push RUN --merge" in readme


def test_onnx_publication_for_push(export, tmp_path):
    publication = onnx_publication(export)
    assert [path for path, _ in publication.uploads] == sorted(f"onnx/{p.name}" for p in export.iterdir())
    assert all(local.is_file() and local.parent == export.resolve() for _, local in publication.uploads)
    card = publication.card
    report = read_report(export)
    assert card["files"] == {"onnx/model.onnx": report.files[MODEL], "onnx/model.int8.onnx": report.files[MODEL_INT8]}
    assert card["parity"]["max_abs_diff"] == report.parity.max_abs_diff and card["parity"]["max_diff"] == 1e-4
    assert [row["runtime"] for row in card["metrics"]] == ["pytorch-fp32", "onnx-fp32", "onnx-int8"]
    assert card["metrics"][0]["accuracy"] == report.metrics[0].metrics["accuracy"] and card["opset"] == report.opset

    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    (copy / "vocab.txt").symlink_to("/etc/hostname")
    with pytest.raises(UnsafePathError, match="is a symlink to /etc/hostname"):
        onnx_publication(copy)
    (copy / "vocab.txt").unlink()
    (copy / MODEL_INT8).unlink()
    with pytest.raises(ExportError, match="model.int8.onnx listed in export_report.json but missing"):
        onnx_publication(copy)
    (copy / REPORT).unlink()
    with pytest.raises(ExportError, match="is not an hft export: export_report.json is missing"):
        onnx_publication(copy)


@pytest.mark.parametrize("command", ["export", "serve"])
def test_help_does_not_import_the_ml_or_web_stack(command):
    heavy = ("torch", "transformers", "datasets", "peft", "onnx", "onnxruntime", "fastapi", "uvicorn", "prometheus_client")
    code = (
        f"import sys\nsys.argv = ['hft', {command!r}, '--help']\nfrom hftoolkit.cli import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY=' + ','.join(m for m in {heavy!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "HEAVY=", out[-500:]
    assert "--onnx" in out if command == "export" else "--max-wait-ms" in out
