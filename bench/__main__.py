"""`python -m bench SCENARIO [--smoke] [--repeats N] [--json out.json]`: the benchmark command line."""

from bench.harness import main

if __name__ == "__main__":
    raise SystemExit(main())
