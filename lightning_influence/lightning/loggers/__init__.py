"""What a scoring event and a pruning plan look like in Lightning's loggers: one adapter per
logger, registered.

Every logger gets the scalars (``logger.log_metrics``): the top eigenvalues, the time of each
phase of the analysis and its cost in training epochs, summaries of the signals; and from
``InfluenceDataModule`` the kept and dropped counts. A logger with an adapter gets more through
its own API: the spectrum plot and the most suspect training examples (an image grid with their
labels for image inputs, a table always; dropped examples marked, the grid showing the top of
the kept set). Built in: ``tensorboard`` (also histograms and the CUSTOM SCALARS page), ``csv``
(PNG and CSV files beside ``metrics.csv``), ``mlflow``, ``wandb``. A new logger is one file with
an adapter and one registration::

    @register_logger("loggers.MyLogger")  # a class path below the namespace, or a class
    class MyAdapter(LoggerAdapter):
        def log_event(self, logger, view): ...

Loggers of both namespaces (``pytorch_lightning``, ``lightning.pytorch``) are recognised.

Tags (``prefix="influence"``): ``influence/eigenvalue_{i}``, ``influence/<phase>_seconds``,
``influence/cost_epochs``, ``influence/self_influence_{mean,max}``,
``influence/validation_influence_{mean,min}`` (scalars); ``influence/spectrum``,
``influence/self_influence`` (histograms); ``influence/spectrum_plot``, ``influence/top_examples``
(images); ``influence/top_examples`` (text, tables).
"""

from lightning_influence.lightning.loggers.base import (
    TABLE_COLUMNS,
    EventView,
    LoggerAdapter,
    PlanView,
    adapter_for,
    log_event,
    log_plan,
    markdown_table,
    register_logger,
    table_rows,
    top_examples,
)
from lightning_influence.lightning.loggers.tensorboard import tensorboard_layout

__all__ = [
    "TABLE_COLUMNS",
    "EventView",
    "LoggerAdapter",
    "PlanView",
    "adapter_for",
    "log_event",
    "log_plan",
    "markdown_table",
    "register_logger",
    "table_rows",
    "tensorboard_layout",
    "top_examples",
]
