"""The CLI's start-up path stays light, and its basic commands work."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hftoolkit import __version__
from tests.conftest import run_hft

HEAVY = ("torch", "transformers", "datasets", "peft", "evaluate", "accelerate", "huggingface_hub")


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["validate", "--help"], ["finetune", "--help"], ["evaluate", "--help"], ["predict", "--help"],
     ["push", "--help"], ["schema"]],
)
def test_help_and_schema_do_not_import_the_ml_stack(argv):
    code = (
        "import sys\n"
        "sys.argv = ['hft', *%r]\n"
        "from hftoolkit.cli import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in %r if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    ) % (argv, HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "HEAVY=", out[-500:]


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, hftoolkit.cli, hftoolkit.recipe.schema, hftoolkit.tasks.registry; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_version_and_module_entry_point():
    proc = run_hft("--version")
    assert proc.stdout.strip() == f"hftoolkit {__version__}"


def test_schema_is_json_schema():
    schema = json.loads(run_hft("schema").stdout)
    assert schema["title"] == "hftoolkit recipe"
    assert set(schema["required"]) >= {"task", "model", "dataset", "output_dir"}


def test_no_arguments_shows_help():
    proc = run_hft(check=False)
    assert "finetune" in proc.stdout + proc.stderr
