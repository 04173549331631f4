"""Files: scoring events (scores, eigenvalues, manifest), checkpoints, atomic writes. No Lightning."""

from lightning_influence.io.atomic import atomic_write
from lightning_influence.io.checkpoint import CheckpointError, read_checkpoint, state_dict_of
from lightning_influence.io.events import ScoringEvent, latest_event_dir, read_event, write_event

__all__ = [
    "CheckpointError",
    "ScoringEvent",
    "atomic_write",
    "latest_event_dir",
    "read_checkpoint",
    "read_event",
    "state_dict_of",
    "write_event",
]
