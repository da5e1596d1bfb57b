"""Meshes, logical-axis sharding rules and expert parallelism."""

from moe_jax.parallel.mesh import AXES, BATCH_AXES, check_fits, make_mesh
from moe_jax.parallel.rules import (DEFAULT_RULES, FSDP_RULES, logical_to_spec,
                                    tree_shardings)
