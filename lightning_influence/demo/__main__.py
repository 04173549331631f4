"""``python -m lightning_influence.demo``: the noisy-label demo (see ``run``)."""

from lightning_influence.demo.run import main

if __name__ == "__main__":
    main()
