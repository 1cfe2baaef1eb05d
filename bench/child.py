"""Child-process entry point: `python -m bench.child SCENARIO VARIANT CONFIG_JSON RESULT_JSON`.

Runs one variant of a scenario in a fresh interpreter and writes its metrics as JSON. The parent measures wall
time and peak RSS of this process from the outside (bench/harness.py).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from bench import SCENARIOS
from bench.probe import Probe


def main(argv: list[str]) -> int:
    scenario, variant, config_path, result_path = argv
    config = json.loads(Path(config_path).read_text())
    module = importlib.import_module(f"bench.{SCENARIOS[scenario]}")
    probe = Probe()
    metrics = module.run_variant(variant, config, probe) or {}
    result = {**probe.summary(), **metrics}
    Path(result_path).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
