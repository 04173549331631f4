"""The noisy-label demo: ``python -m lightning_influence.demo`` (or ``lightning-influence-demo``).

``data`` (scikit-learn's digits with flipped labels), ``model`` (the small CNN shared with the
examples, benchmarks and GPU check) and ``run`` (the demo's arms and report). Needs scikit-learn:
``pip install 'lightning-influence[demo]'``.
"""

from lightning_influence.demo.data import Digits, DigitsData, load
from lightning_influence.demo.model import DigitsCNN, digits_cnn
from lightning_influence.demo.run import ARMS, main, run

__all__ = ["ARMS", "Digits", "DigitsCNN", "DigitsData", "digits_cnn", "load", "main", "run"]
