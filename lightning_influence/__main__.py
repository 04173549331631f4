"""``python -m lightning_influence``: the ``lightning-influence`` command line (see ``cli``)."""

from lightning_influence.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
