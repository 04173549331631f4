"""Files: scoring events (signals, eigenvalues, manifest), score shards, checkpoints, atomic
writes. No Lightning."""

from lightning_influence.io.atomic import atomic_write
from lightning_influence.io.checkpoint import CheckpointError, read_checkpoint, state_dict_of
from lightning_influence.io.events import (
    ScoringEvent,
    latest_event_dir,
    load_event,
    read_event,
    write_event,
)
from lightning_influence.io.shards import read_scores

__all__ = [
    "CheckpointError",
    "ScoringEvent",
    "atomic_write",
    "latest_event_dir",
    "load_event",
    "read_checkpoint",
    "read_event",
    "read_scores",
    "state_dict_of",
    "write_event",
]
