"""One module per hft command, each a function that reads top to bottom (cli.py only parses options)."""
