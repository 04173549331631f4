"""The ``lightning-influence`` command line (``score``, ``explain``, ``spectrum``)."""

from lightning_influence.cli.commands import main

__all__ = ["main"]
