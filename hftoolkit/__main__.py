"""`python -m hftoolkit ...` runs the `hft` CLI (also what `accelerate launch -m hftoolkit` uses)."""

from hftoolkit.cli import main

if __name__ == "__main__":
    main()
