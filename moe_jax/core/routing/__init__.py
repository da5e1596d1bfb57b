"""Routers, one file each, registered by name (registry.py).

Importing this package registers the built-in routers, in the order the
error messages and `moe.router_options` list them. A new router is one more
file that calls registry.register, imported here (or, outside moe_jax,
anywhere before the config is built).
"""

from moe_jax.core.routing import registry
from moe_jax.core.routing.registry import (ExtraParam, NoOptions, RouterInputs,
                                           RouterSpec, get, names, register)
# Registration order: switch, gshard, topk, expert_choice, sigmoid,
# noisy_topk, bpr, soft, deepseek, relu, uniform.
from moe_jax.core.routing import switch  # pylint: disable=g-bad-import-order
from moe_jax.core.routing import gshard
from moe_jax.core.routing import topk
from moe_jax.core.routing import expert_choice
from moe_jax.core.routing import sigmoid
from moe_jax.core.routing import noisy_topk
from moe_jax.core.routing import bpr
from moe_jax.core.routing import soft
from moe_jax.core.routing import deepseek
from moe_jax.core.routing import relu
from moe_jax.core.routing import uniform

# MoEConfig's router when none is named: Switch top-1 (Fedus et al. 2021).
DEFAULT = switch.SPEC.name
