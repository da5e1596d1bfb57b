"""Flax NNX modules over the pure MoE core."""

from moe_jax.layers.moe import MoELayer
