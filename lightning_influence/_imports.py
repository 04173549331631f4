"""The one place optional dependencies are gated: each is a ``RequirementCache`` (true when the
package is installed at a version the extra declares), so that a module asks, never tries."""

from __future__ import annotations

from lightning_utilities.core.imports import RequirementCache

__all__ = [
    "MATPLOTLIB_AVAILABLE",
    "PANDAS_AVAILABLE",
    "PEFT_AVAILABLE",
    "PIL_AVAILABLE",
    "SAFETENSORS_AVAILABLE",
    "SKLEARN_AVAILABLE",
    "TORCH_XLA_AVAILABLE",
    "TRANSFORMERS_AVAILABLE",
]

MATPLOTLIB_AVAILABLE = RequirementCache("matplotlib>=3.6")
PANDAS_AVAILABLE = RequirementCache("pandas>=1.5")
# the loggers draw the spectrum plot and the example grid with Pillow; mlflow and wandb turn
# numpy pixels into images with it
PIL_AVAILABLE = RequirementCache("pillow>=9.2", "PIL")
SAFETENSORS_AVAILABLE = RequirementCache("safetensors>=0.4")
SKLEARN_AVAILABLE = RequirementCache("scikit-learn>=1.2", "sklearn")
TORCH_XLA_AVAILABLE = RequirementCache("torch_xla")
TRANSFORMERS_AVAILABLE = RequirementCache("transformers>=4.40")
PEFT_AVAILABLE = RequirementCache("peft>=0.10")
