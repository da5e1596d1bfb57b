"""Parameter-free token movers between a group batch and the experts."""

from moe_jax.core.dispatch.base import Dispatcher, ExpertInputs
from moe_jax.core.dispatch.dropless import DROPLESS
from moe_jax.core.dispatch.einsum import EINSUM
from moe_jax.core.dispatch.index import INDEX

DISPATCHERS: dict[str, Dispatcher] = {d.name: d for d in (EINSUM, INDEX, DROPLESS)}
