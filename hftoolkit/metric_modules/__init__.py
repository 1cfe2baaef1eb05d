"""evaluate modules shipped with hftoolkit, so default metrics load offline and are pinned to this code.

Each folder is a standard `evaluate` module (`<name>/<name>.py`) loaded with `evaluate.load(<folder>)`.
"""
