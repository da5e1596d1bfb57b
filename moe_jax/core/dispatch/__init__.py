"""Parameter-free token movers between a group batch and the experts."""

from moe_jax.core.dispatch.base import Dispatcher, ExpertInputs
from moe_jax.core.dispatch.dropless import DROPLESS as _DROPLESS_RAGGED
from moe_jax.core.dispatch.dropless_blocked import DROPLESS_BLOCKED
from moe_jax.core.dispatch.einsum import EINSUM
from moe_jax.core.dispatch.index import INDEX

# 'dropless' is the blocked layout: a batched matmul, fast on every backend.
# The ragged_dot version stays as 'dropless_ragged' for GPU/TPU, where
# ragged_dot is a grouped-matmul kernel (on CPU it is several times slower).
DROPLESS_RAGGED = _DROPLESS_RAGGED._replace(name='dropless_ragged')

DISPATCHERS: dict[str, Dispatcher] = {
    d.name: d for d in (EINSUM, INDEX, DROPLESS_BLOCKED, DROPLESS_RAGGED)}
