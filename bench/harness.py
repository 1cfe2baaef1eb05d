"""The benchmark harness: plans, alternating child-process runs, medians and spreads, the table and the JSON.

A scenario module provides:
- `plan(args, out) -> Plan`: the configuration every child receives, the variants, the table's metrics, the
  ratios to report (with their targets) and the default number of repeats;
- `run_variant(variant, config, probe) -> dict`: runs in the child process (bench/child.py) and returns metrics;
- optionally `command(variant, config) -> list[str] | None`: a command to time instead of bench.child (startup);
- optionally `checks(runs, summary, config) -> list[dict]`: correctness checks ({check, ok, detail}).

The parent only plans, launches and summarises: every measured piece of work happens in a fresh child process.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench import SCENARIOS

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "out"


def shared_dir() -> Path:
    """The shared real data and weights (../shared unless HFT_SHARED says otherwise)."""
    return Path(os.environ.get("HFT_SHARED", REPO.parent / "shared"))


@dataclass
class Comparison:
    """A ratio of two variants' metric, computed per repeat (paired runs) and summarised by its median."""

    label: str
    metric: str
    numerator: str
    denominator: str
    target: float | None = None
    at_least: bool = True  # the target is a minimum (speed-ups) or, when False, a maximum (memory, cached time)


@dataclass
class Plan:
    config: dict[str, Any]
    variants: list[str]
    metrics: list[str]
    comparisons: list[Comparison] = field(default_factory=list)
    repeats: int = 3
    # True: every repeat runs the variants in the listed order, because a later one depends on an earlier one
    # (preprocess: the cached run reads what the first run wrote). False: the order rotates each repeat.
    ordered: bool = False
    # "run": a fresh, empty datasets cache for every child; "repeat": one fresh cache shared by a repeat's children.
    cache: str = "run"
    notes: list[str] = field(default_factory=list)


# Metric name -> (column title, format). Unknown metrics are shown with their own name.
METRIC_FORMATS = {
    "samples_per_s": ("samples/s", "{:.1f}"),
    "tokens_per_s": ("tokens/s (non-pad)", "{:.0f}"),
    "padded_tokens_per_s": ("tokens/s (incl. pad)", "{:.0f}"),
    "peak_rss_mb": ("peak RSS MB", "{:.0f}"),
    "train_peak_rss_mb": ("train peak RSS MB", "{:.0f}"),
    "train_rss_increase_mb": ("train RSS increase MB", "{:.0f}"),
    "gpu_peak_mem_mb": ("GPU peak MB", "{:.0f}"),
    "time_to_first_step_s": ("first step s", "{:.1f}"),
    "wall_s": ("wall s", "{:.2f}"),
    "accuracy": ("accuracy", "{:.3f}"),
    "mfu": ("MFU", "{:.1%}"),
    "prepare_s": ("prepare_data s", "{:.2f}"),
    "tokenize_s": ("tokenize s", "{:.2f}"),
    "map_s": ("map s", "{:.2f}"),
    "eval_loss": ("eval loss", "{:.4f}"),
    "weight_files_opened": ("weight files opened", "{:.0f}"),
    "max_abs_loss_diff": ("max |loss diff|", "{:.1e}"),
    "rows": ("rows", "{:.0f}"),
    "rss_at_train_start_mb": ("RSS at train start MB", "{:.0f}"),
}


def _parse_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--option takes KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="Benchmark hftoolkit against a baseline.")
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--smoke", action="store_true", help="Tiny fixture model and a few steps: checks the harness works.")
    p.add_argument("--repeats", type=int, default=None, help="Alternations (each runs every variant once).")
    p.add_argument("--json", type=Path, default=None, help="Also write the results JSON here.")
    p.add_argument("--variants", default=None, help="Comma-separated variants to run instead of the scenario's default.")
    p.add_argument(
        "--option", "-o", action="append", default=[], type=_parse_option, metavar="KEY=VALUE",
        help="Override a scenario setting (e.g. -o steps=30); values are JSON, else strings.",
    )
    p.add_argument("--out", type=Path, default=None, help="Working folder (default bench/out/SCENARIO-TIME).")
    p.add_argument("--timeout", type=int, default=3600, help="Seconds before a child run is killed.")
    p.add_argument("--keep", action="store_true", help="Keep run folders and caches of the children.")
    return p


# ----------------------------------------------------------------------------------------------------------------------
# Machine description


def _run_text(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    lscpu = {}
    for line in _run_text(["lscpu"]).splitlines():
        key, _, value = line.partition(":")
        lscpu[key.strip()] = value.strip()
    versions = {}
    for name in ("torch", "transformers", "datasets", "peft", "accelerate", "tokenizers"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    gpu = _run_text(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]) if shutil.which("nvidia-smi") else ""
    return {
        "cpu": lscpu.get("Model name", platform.processor()),
        "nproc": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in lscpu.get("Flags", ""),
        "memory": _run_text(["free", "-h"]).splitlines()[1:2] or [],
        "gpu": gpu or None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Running one child


@dataclass
class RunResult:
    variant: str
    repeat: int
    ok: bool
    metrics: dict[str, Any]
    load_before: tuple[float, float, float]
    log: str


def run_child(cmd: list[str], env: dict[str, str], log_path: Path, timeout: int) -> tuple[int, float, float]:
    """Run `cmd`; returns (exit code, wall seconds, peak RSS MB of the child and its waited-for descendants)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        try:
            # wait4 rather than wait(): it hands back this child's own rusage, so peak RSS is per run.
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, usage.ru_maxrss / 1024  # Linux reports KiB


def child_env(cache_dir: Path, home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_HOME": str(home),
        "HF_DATASETS_CACHE": str(cache_dir),
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.update(extra or {})
    return env


# ----------------------------------------------------------------------------------------------------------------------
# Statistics and output


def summarise(runs: list[RunResult], variants: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for v in variants:
        values: dict[str, list[float]] = {}
        for r in runs:
            if r.variant == v and r.ok:
                for k, x in r.metrics.items():
                    if isinstance(x, (int, float)) and not isinstance(x, bool):
                        values.setdefault(k, []).append(float(x))
        out[v] = {
            k: {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)} for k, xs in values.items()
        }
    return out


def compare(runs: list[RunResult], comparisons: list[Comparison]) -> list[dict[str, Any]]:
    out = []
    for c in comparisons:
        by_repeat: dict[int, dict[str, float]] = {}
        for r in runs:
            value = r.metrics.get(c.metric)
            if r.ok and r.variant in (c.numerator, c.denominator) and isinstance(value, (int, float)):
                by_repeat.setdefault(r.repeat, {})[r.variant] = float(value)
        # Paired per repeat: the two runs of a repeat ran back to back, under about the same load.
        ratios = [
            d[c.numerator] / d[c.denominator] for _, d in sorted(by_repeat.items())
            if c.numerator in d and c.denominator in d and d[c.denominator] > 0
        ]
        row: dict[str, Any] = {**asdict(c), "ratios": ratios}
        if ratios:
            median = statistics.median(ratios)
            row.update(median=median, min=min(ratios), max=max(ratios))
            if c.target is not None:
                row["met"] = median >= c.target if c.at_least else median <= c.target
        out.append(row)
    return out


def _fmt(metric: str, stats: dict[str, float] | None) -> str:
    if not stats:
        return "-"
    _, f = METRIC_FORMATS.get(metric, (metric, "{:.3g}"))
    if stats["n"] > 1 and stats["min"] != stats["max"]:
        return f"{f.format(stats['median'])} [{f.format(stats['min'])}-{f.format(stats['max'])}]"
    return f.format(stats["median"])


def table(summary: dict, variants: list[str], metrics: list[str]) -> str:
    cols = [m for m in metrics if any(m in summary.get(v, {}) for v in variants)]
    header = ["variant"] + [METRIC_FORMATS.get(m, (m, ""))[0] for m in cols]
    rows = [[v] + [_fmt(m, summary.get(v, {}).get(m)) for m in cols] for v in variants]
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def comparison_lines(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for c in rows:
        if "median" not in c:
            out.append(f"- {c['label']}: no paired runs")
            continue
        spread = f" [{c['min']:.2f}-{c['max']:.2f}, {len(c['ratios'])} pairs]" if len(c["ratios"]) > 1 else ""
        goal = ""
        if c.get("target") is not None:
            sign = ">=" if c["at_least"] else "<="
            goal = f" (target {sign} {c['target']:g}: {'met' if c['met'] else 'NOT met'})"
        out.append(f"- {c['label']}: {c['median']:.2f}x{spread}{goal}")
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Main


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"bench.{SCENARIOS[args.scenario]}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = (args.out or DEFAULT_OUT / f"{args.scenario}{'-smoke' if args.smoke else ''}-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    plan: Plan = module.plan(args, out)
    plan.config.update(dict(args.option))
    variants = args.variants.split(",") if args.variants else plan.variants
    repeats = args.repeats or plan.repeats
    config_path = out / "config.json"
    config_path.write_text(json.dumps(plan.config, indent=2))

    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_start = os.getloadavg()
    print(f"[bench] {args.scenario}: {len(variants)} variants x {repeats} repeats, working in {out}", flush=True)
    runs = _run_all(args, module, plan, variants, repeats, out, config_path)
    summary = summarise(runs, variants)
    comparisons = compare(runs, plan.comparisons)
    checker = getattr(module, "checks", None)
    checks = checker(runs, summary, plan.config) if checker else []
    report = {
        "scenario": args.scenario,
        "smoke": args.smoke,
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "config": plan.config,
        "variants": variants,
        "repeats": repeats,
        "runs": [asdict(r) for r in runs],
        "summary": summary,
        "comparisons": comparisons,
        "checks": checks,
        "notes": plan.notes,
    }
    text = json.dumps(report, indent=2, default=str)
    (out / "results.json").write_text(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    _print_report(args, report, plan, out)
    failed = [r for r in runs if not r.ok]
    return 1 if failed or any(not c["ok"] for c in checks) else 0


def _run_all(args: Any, module: Any, plan: Plan, variants: list[str], repeats: int, out: Path,
             config_path: Path) -> list[RunResult]:
    """Every (repeat, variant) in its own child process, the order rotated per repeat unless the plan fixes it."""
    command_of: Callable | None = getattr(module, "command", None)
    runs: list[RunResult] = []
    for repeat in range(repeats):
        order = variants if plan.ordered else variants[repeat % len(variants):] + variants[: repeat % len(variants)]
        repeat_cache = out / "cache" / f"r{repeat}"
        for variant in order:
            tag = f"r{repeat}-{variant}"
            cache = repeat_cache if plan.cache == "repeat" else out / "cache" / tag
            result_path = out / "results" / f"{tag}.json"
            result_path.parent.mkdir(parents=True, exist_ok=True)
            cmd = command_of(variant, plan.config) if command_of else None
            if cmd is None:
                cmd = [sys.executable, "-m", "bench.child", args.scenario, variant, str(config_path), str(result_path)]
            env = child_env(cache, out / "hf_home", {"BENCH_LAUNCHED_AT": repr(time.time()), "BENCH_RUN_DIR": str(out / "runs" / tag)})
            load = os.getloadavg()
            code, wall, rss = run_child(cmd, env, out / "logs" / f"{tag}.log", args.timeout)
            metrics: dict[str, Any] = {"wall_s": wall, "peak_rss_mb": rss}
            if result_path.is_file():
                metrics.update(json.loads(result_path.read_text()))
            runs.append(RunResult(variant, repeat, code == 0, metrics, load, str(out / "logs" / f"{tag}.log")))
            shown = ", ".join(
                f"{k} {v:.4g}" for k, v in metrics.items() if k in plan.metrics and isinstance(v, (int, float))
            )
            print(f"[bench] repeat {repeat + 1}/{repeats} {variant}: {'ok' if code == 0 else f'FAILED (exit {code})'}; "
                  f"load {load[0]:.2f}; {shown}", flush=True)
            if code != 0:
                tail = (out / "logs" / f"{tag}.log").read_text(errors="replace")[-3000:]
                print(f"[bench] log tail of {tag}:\n{tail}", file=sys.stderr, flush=True)
            if plan.cache == "run" and not args.keep:
                shutil.rmtree(cache, ignore_errors=True)
        if plan.cache == "repeat" and not args.keep:
            shutil.rmtree(repeat_cache, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(out / "runs", ignore_errors=True)
    return runs


def _print_report(args: Any, report: dict[str, Any], plan: Plan, out: Path) -> None:
    m = report["machine"]
    print(f"\n## {args.scenario} ({report['started']})")
    print(f"machine: {m['cpu']}, {m['nproc']} CPUs, GPU {m['gpu'] or 'none'}; torch {m['versions'].get('torch')}, "
          f"transformers {m['versions'].get('transformers')}")
    print(f"load average: start {' '.join(f'{x:.2f}' for x in report['load_average']['start'])}, "
          f"end {' '.join(f'{x:.2f}' for x in report['load_average']['end'])}")
    print(f"command: {report['command']}\n")
    print(table(report["summary"], report["variants"], plan.metrics))
    print("\nmedian [min-max] over repeats")
    for line in comparison_lines(report["comparisons"]):
        print(line)
    for c in report["checks"]:
        print(f"- check {c['check']}: {'ok' if c['ok'] else 'FAILED'} ({c['detail']})")
    for note in plan.notes:
        print(f"- note: {note}")
    print(f"\nJSON: {out / 'results.json'}" + (f" and {args.json}" if args.json else ""))
