"""Scenario `startup`: `hft --help` wall time, and `hft validate` wall time plus proof that it reads no weights.

Variants (each a fresh process, timed from the outside):
- hft-help: the installed `hft --help` console script (target: median <= 0.5 s);
- hft-help-rich: the same help rendered by typer with rich panels (hft's CLI turns that off, rich_markup_mode=None);
- python-bare: `python -c pass`, the interpreter's own start-up (the floor under any CLI);
- import-stack: `python -c "import torch, transformers"`, what a CLI importing its ML stack at start-up would pay;
- hft-validate: `hft validate recipes/quickstart.yaml`;
- validate-traced / load-traced: the same validate inside a child that records every weight file opened (Python
  audit hook for `open`, plus wrappers on safetensors' Rust loader and torch.load, installed before anything
  imports them); load-traced loads the quickstart model with hftoolkit.modeling.load_model, the positive control
  that shows the tracker sees weight loading when it happens;
- validate-strace / load-strace: the same two under `strace -f -e trace=open,openat` (when strace is installed),
  an independent check at the system-call level.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from bench.harness import REPO, Comparison, Plan

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".pkl")
HELP_TARGET_S = 0.5


def plan(args: Any, out: Path) -> Plan:
    variants = ["hft-help", "hft-help-rich", "python-bare", "import-stack", "hft-validate", "validate-traced", "load-traced"]
    if shutil.which("strace"):
        variants += ["validate-strace", "load-strace"]
    return Plan(
        config={"recipe": "recipes/quickstart.yaml", "python": sys.executable, "hft": _hft_script()},
        variants=variants,
        metrics=["wall_s", "peak_rss_mb", "weight_files_opened"],
        comparisons=[
            Comparison("hft --help wall / the same help rendered with rich", "wall_s", "hft-help", "hft-help-rich"),
            Comparison("hft --help wall / import torch+transformers wall", "wall_s", "hft-help", "import-stack"),
        ],
        repeats=2 if args.smoke else 5,
        notes=["wall_s of the traced and strace variants includes the tracing overhead; time hft-validate instead"],
    )


def _hft_script() -> str:
    script = Path(sys.executable).with_name("hft")
    return str(script) if script.exists() else (shutil.which("hft") or "")


def command(variant: str, config: dict[str, Any]) -> list[str] | None:
    py, hft = config["python"], config["hft"] or None
    cli = [hft] if hft else [py, "-m", "hftoolkit"]
    if variant == "hft-help":
        return cli + ["--help"]
    if variant == "hft-help-rich":
        # The same CLI with typer's rich help switched back on: what rich_markup_mode=None in hftoolkit/cli.py saves.
        code = "import sys; sys.argv = ['hft', '--help']; from hftoolkit.cli import app; app.rich_markup_mode = 'rich'; app()"
        return [py, "-c", code]
    if variant == "python-bare":
        return [py, "-c", "pass"]
    if variant == "import-stack":
        return [py, "-c", "import torch, transformers"]
    if variant == "hft-validate":
        return cli + ["validate", config["recipe"]]
    return None  # traced variants run in bench.child


# ----------------------------------------------------------------------------------------------------------------------
# Child side


def run_variant(variant: str, config: dict[str, Any], probe: Any) -> dict[str, Any]:
    if variant.endswith("-strace"):
        return _strace(variant, config)
    opened = _track_weight_files()
    if variant == "validate-traced":
        from hftoolkit.cli import app

        try:
            app(["validate", config["recipe"]], prog_name="hft")
        except SystemExit as e:
            if e.code:
                raise
    elif variant == "load-traced":
        from hftoolkit.modeling import load_model
        from hftoolkit.recipe.schema import load_recipe
        from hftoolkit.tasks.registry import get_task

        load_model(get_task("text-classification"), load_recipe(REPO / config["recipe"]), ["negative", "positive"])
    else:
        raise SystemExit(f"unknown startup variant {variant}")
    return {"weight_files_opened": len(set(opened)), "weight_files": sorted(set(opened))}


def _is_weight_file(path: Any) -> bool:
    if not isinstance(path, (str, bytes, Path)):
        return False
    p = Path(path.decode() if isinstance(path, bytes) else path)
    # A .pth file directly in site-packages is a path-configuration file that `site` reads at start-up, not weights.
    if p.suffix == ".pth" and p.parent.name in ("site-packages", "dist-packages"):
        return False
    return p.name.endswith(WEIGHT_SUFFIXES)


def _track_weight_files() -> list[str]:
    """Record weight files opened from now on in this process. Must run before transformers is imported: it binds
    `safetensors.safe_open` at import time, and that loader opens files in Rust where no audit hook sees them."""
    import safetensors
    import safetensors.torch
    import torch

    assert "transformers" not in sys.modules, "install the tracker before transformers is imported"
    opened: list[str] = []

    def audit(event: str, args: tuple) -> None:
        if event == "open" and args and _is_weight_file(args[0]):
            opened.append(str(args[0]))

    sys.addaudithook(audit)

    def wrap(module: Any, name: str) -> None:
        original = getattr(module, name)

        def tracked(path, *a, **k):
            if _is_weight_file(path):
                opened.append(str(path))
            return original(path, *a, **k)

        setattr(module, name, tracked)

    wrap(safetensors, "safe_open")
    wrap(safetensors.torch, "load_file")
    wrap(torch, "load")
    return opened


def _strace(variant: str, config: dict[str, Any]) -> dict[str, Any]:
    import os
    import subprocess
    import tempfile

    if variant == "validate-strace":
        target = [config["python"], "-m", "hftoolkit", "validate", config["recipe"]]
    else:
        code = (
            "from hftoolkit.modeling import load_model; from hftoolkit.recipe.schema import load_recipe; "
            "from hftoolkit.tasks.registry import get_task; "
            f"load_model(get_task('text-classification'), load_recipe({config['recipe']!r}), ['negative', 'positive'])"
        )
        target = [config["python"], "-c", code]
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as trace:
        subprocess.run(["strace", "-f", "-qq", "-e", "trace=open,openat", "-o", trace.name, *target],
                       check=True, cwd=REPO, env=os.environ, stdout=subprocess.DEVNULL)
        lines = trace.read().splitlines()
    opened = set()
    for line in lines:
        # e.g. 123 openat(AT_FDCWD, "/path/model.safetensors", O_RDONLY|O_CLOEXEC) = 5   (failed opens end in -1)
        if '"' in line and "= -1" not in line:
            path = line.split('"')[1]
            if _is_weight_file(path):
                opened.add(path)
    return {"weight_files_opened": len(opened), "weight_files": sorted(opened), "syscalls_traced": len(lines)}


# ----------------------------------------------------------------------------------------------------------------------
# Checks


def checks(runs: list, summary: dict, config: dict) -> list[dict[str, Any]]:
    out = []
    help_wall = summary.get("hft-help", {}).get("wall_s")
    if help_wall:
        out.append({
            "check": f"hft --help <= {HELP_TARGET_S} s",
            "ok": help_wall["median"] <= HELP_TARGET_S,
            "detail": f"median {help_wall['median']:.3f} s [{help_wall['min']:.3f}-{help_wall['max']:.3f}] over {help_wall['n']} runs",
        })
    for variant, expect_none in (("validate-traced", True), ("validate-strace", True), ("load-traced", False), ("load-strace", False)):
        found = [r for r in runs if r.variant == variant]
        if not found:
            continue
        counts = [r.metrics.get("weight_files_opened") for r in found]
        files = sorted({f for r in found for f in r.metrics.get("weight_files", [])})
        ok = all(r.ok for r in found) and (all(c == 0 for c in counts) if expect_none else all(c and c > 0 for c in counts))
        what = "opens no weight file" if expect_none else "sees the weights being opened (positive control)"
        out.append({"check": f"{variant} {what}", "ok": ok, "detail": f"weight files opened per run {counts}; {files[:3]}"})
    return out
