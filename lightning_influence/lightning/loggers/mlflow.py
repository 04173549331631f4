"""MLFlowLogger: images with ``log_image(key=..., step=...)`` (the run's image charts; they need
Pillow) and the table with ``log_table`` (``log_dict`` without pandas) as the artifact
``<prefix>/top_examples/epoch=E-step=S.json``."""

from __future__ import annotations

import warnings
from typing import Any

from lightning_influence._imports import PANDAS_AVAILABLE, PIL_AVAILABLE
from lightning_influence.lightning.loggers.base import (
    TABLE_COLUMNS,
    EventView,
    LoggerAdapter,
    register_logger,
    table_rows,
)

__all__ = ["MLFlowAdapter"]


@register_logger("loggers.MLFlowLogger")
class MLFlowAdapter(LoggerAdapter):
    def log_event(self, logger: Any, view: EventView) -> None:
        client, run_id = logger.experiment, logger.run_id
        if PIL_AVAILABLE:
            for name, pixels in view.media.items():
                client.log_image(run_id, pixels, key=f"{view.prefix}/{name}", step=view.step)
        if view.top:
            artifact = f"{view.prefix}/top_examples/{view.folder}.json"
            rows = table_rows(view.top)
            columns = {c: [row[k] for row in rows] for k, c in enumerate(TABLE_COLUMNS)}
            if PANDAS_AVAILABLE:
                with warnings.catch_warnings():
                    # mlflow's own select_dtypes(include=["object"]) warns under pandas 3
                    warnings.filterwarnings("ignore", message=".*select_dtypes.*")
                    client.log_table(run_id, data=columns, artifact_file=artifact)
            else:
                client.log_dict(run_id, columns, artifact)
