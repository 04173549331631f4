"""Experimental methods, outside the engine's path (tested and benchmarked, not used by the
engines or the callback): ``block`` (block products and block Arnoldi)."""

from lightning_influence.experimental.block import block_arnoldi, distill_block, matmat

__all__ = ["block_arnoldi", "distill_block", "matmat"]
