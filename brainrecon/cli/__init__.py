"""The command line: one module per command group, assembled in `main.py`."""

from brainrecon.cli.main import app, main

__all__ = ["app", "main"]
