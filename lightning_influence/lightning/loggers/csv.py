"""CSVLogger (no media API): ``spectrum_plot.png``, ``top_examples.png`` and
``top_examples.csv`` in ``<log_dir>/media/<prefix>/epoch=E-step=S/``, beside its
``metrics.csv``. Not under ``<log_dir>/influence/``: that is where the event folders go."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from lightning_influence.io.atomic import atomic_write_bytes
from lightning_influence.lightning.loggers.base import (
    TABLE_COLUMNS,
    EventView,
    LoggerAdapter,
    register_logger,
    table_rows,
)
from lightning_influence.viz import png_bytes

__all__ = ["CSVAdapter"]


@register_logger("loggers.CSVLogger")
class CSVAdapter(LoggerAdapter):
    def log_event(self, logger: Any, view: EventView) -> None:
        folder = Path(logger.log_dir) / "media" / view.prefix / view.folder
        folder.mkdir(parents=True, exist_ok=True)
        for name, pixels in view.media.items():
            atomic_write_bytes(folder / f"{name}.png", png_bytes(pixels))
        if view.top:
            text = io.StringIO()
            writer = csv.writer(text)
            writer.writerow(TABLE_COLUMNS)
            writer.writerows(table_rows(view.top))
            atomic_write_bytes(folder / "top_examples.csv", text.getvalue().encode())
