"""Parameter-free token movers between a group batch and the experts."""

from moe_jax.core.dispatch.base import (Dispatcher, ExpertInputs, RunExperts,
                                        run_local)
from moe_jax.core.dispatch.dropless import DROPLESS_RAGGED
from moe_jax.core.dispatch.dropless_blocked import DROPLESS_BLOCKED
from moe_jax.core.dispatch.einsum import EINSUM
from moe_jax.core.dispatch.fused import DROPLESS_FUSED, FUSED
from moe_jax.core.dispatch.index import INDEX

# 'dropless' is the blocked layout: tiled matmuls, fast on every backend.
# 'dropless_ragged' uses jax.lax.ragged_dot, a grouped-matmul kernel on
# GPU/TPU but several times slower than dense matmuls on CPU.
DISPATCHERS: dict[str, Dispatcher] = {
    d.name: d
    for d in (EINSUM, INDEX, FUSED, DROPLESS_BLOCKED, DROPLESS_FUSED,
              DROPLESS_RAGGED)}
