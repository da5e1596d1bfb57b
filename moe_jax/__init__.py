"""moe_jax: sparse Mixture-of-Experts transformers in JAX/Flax."""

from moe_jax.core import MoEConfig, RoutingPlan
from moe_jax.core.capacity import assign_slots, expert_capacity
from moe_jax.core.dispatch import DISPATCHERS
from moe_jax.core.losses import load_balance_loss, z_loss
from moe_jax.core.routing.gshard import gshard_top2
from moe_jax.core.routing.switch import switch_top1
from moe_jax.core.routing.topk import top_k
from moe_jax.errors import UserInputError
from moe_jax.layers import MoELayer
# Expert-parallel under a mesh (the core's moe_apply is not).
from moe_jax.parallel.expert_parallel import parallel_moe_apply

__version__ = '0.1.0'
