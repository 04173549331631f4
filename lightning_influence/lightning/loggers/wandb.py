"""WandbLogger: ``log_image`` (needs Pillow) and ``log_table``."""

from __future__ import annotations

from typing import Any

from lightning_influence._imports import PIL_AVAILABLE
from lightning_influence.lightning.loggers.base import (
    TABLE_COLUMNS,
    EventView,
    LoggerAdapter,
    register_logger,
    table_rows,
)

__all__ = ["WandbAdapter"]


@register_logger("loggers.WandbLogger")
class WandbAdapter(LoggerAdapter):
    def log_event(self, logger: Any, view: EventView) -> None:
        if PIL_AVAILABLE:
            for name, pixels in view.media.items():
                logger.log_image(key=f"{view.prefix}/{name}", images=[pixels], step=view.step)
        if view.top:
            logger.log_table(
                key=f"{view.prefix}/top_examples",
                columns=list(TABLE_COLUMNS),
                data=table_rows(view.top),
                step=view.step,
            )
