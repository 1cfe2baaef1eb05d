"""hftoolkit: fine-tune, evaluate and publish Hugging Face models from YAML recipes.

Importing this package must stay cheap (no torch/transformers): the CLI's start-up path goes through it.
"""

__version__ = "0.1.0"
