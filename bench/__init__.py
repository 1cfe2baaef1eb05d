"""Benchmarks for hftoolkit: `python -m bench SCENARIO` runs hft and a baseline side by side (see bench/RESULTS.md).

Every measured variant runs in its own child process (clean imports, its own peak RSS), variants alternate within
each repeat so machine load hits them alike, and results are medians with their spread. Scenarios are modules of
this package listed in `SCENARIOS`; harness.py holds the shared machinery, child.py the child-process entry point.
"""

# Scenario name on the command line -> module in this package. Modules are imported only when their scenario runs.
SCENARIOS = {
    "text-cls": "text_cls",
    "run-ner": "run_ner",
    "clm-packing": "clm_packing",
    "startup": "startup",
    "preprocess": "preprocess",
    "lora-memory": "lora_memory",
    "qlora-memory": "qlora_memory",
    "dpo-overhead": "dpo_overhead",
    "preference-defaults": "preference_defaults",
    "task-defaults": "task_defaults",
    "deploy": "deploy",
}
