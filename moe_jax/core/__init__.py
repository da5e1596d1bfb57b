"""The pure-functional MoE core: arrays in, arrays out, no module system."""

from moe_jax.core import capacity, dispatch, experts, losses, metrics, routing
from moe_jax.core.config import MoEConfig
from moe_jax.core.moe import moe_apply
from moe_jax.core.plan import DROPPED, RoutingPlan
