"""LoRA (Hu et al. 2021) as a pytree of adapters beside frozen parameters.

For each targeted weight W, viewed as a matrix [in, out] (per expert for
stacked expert weights [E, in, out]), the model uses

    W' = W + (α / r) · A · B,    A [in, r] random, B [r, out] zero at init,

so training starts at the base model (B = 0). The adapters are their own
tree, {'blocks': {'1': {'ffn': {'wi': {'a': A, 'b': B}}}}}, mirroring the
parameters' paths, and the model files stay untouched: `merge` folds them
into the parameter state inside the loss function. Only the adapters are in
the optimizer's tree, so the frozen weights cannot move.

Shapes as matrices: attention wq/wk/wv [D, H, Dh] are [D, H·Dh]; attention
wo [H, Dh, D] is [H·Dh, D]; expert wi [E, D, F] is E matrices [D, F].
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from moe_jax.errors import UserInputError, check_positive
from moe_jax.train.init_from import EXPERT_NAMES, flatten, key_path

TARGETS = ('attention', 'experts', 'router', 'shared_experts', 'dense_ffn')


def target_of(path: str, ndim: int) -> str | None:
  """Which LoRA target a parameter belongs to, or None (never adapted:
  embeddings, norms, the output head, noisy top-k's noise kernel)."""
  *_, module, name = ['', ''] + path.split('/')
  if module == 'attn':
    return 'attention'
  if module != 'ffn':
    return None
  if name == 'router_kernel':
    return 'router'
  if name.startswith('shared_'):
    return 'shared_experts'
  if name in EXPERT_NAMES:
    return 'experts' if ndim == 3 else 'dense_ffn'
  return None


def _layout(path: str, ndim: int) -> tuple[int, int]:
  """(leading batch axes, input axes) of a targeted weight."""
  if target_of(path, ndim) == 'attention':
    return 0, (2 if path.endswith('/wo') else 1)
  return (1 if target_of(path, ndim) == 'experts' else 0), 1


def adapter_shapes(shapes: dict[str, tuple[int, ...]], targets, rank: int
                   ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
  """path -> (A shape, B shape) for every parameter the targets select.

  Args:
    shapes: path -> shape of the model's parameters.
    targets: a subset of TARGETS.
    rank: r > 0.
  """
  unknown = sorted(set(targets) - set(TARGETS))
  if unknown or not targets:
    raise UserInputError(
        f'lora.targets={tuple(targets)!r} must be a non-empty subset of '
        f'{TARGETS}; set --config.lora.targets')
  check_positive('lora.rank', rank,
                 fix='0 turns LoRA off; set --config.lora.rank')
  out, sides = {}, {}
  for path, shape in shapes.items():
    if target_of(path, len(shape)) in targets:
      batch, n_in = _layout(path, len(shape))
      lead, split = shape[:batch], batch + n_in
      out[path] = (lead + shape[batch:split] + (rank,),
                   lead + (rank,) + shape[split:])
      sides[path] = min(math.prod(shape[batch:split]),
                        math.prod(shape[split:]))
  if not out:
    raise UserInputError(
        f'lora.targets={tuple(targets)!r} select no parameter of this model '
        "(e.g. 'experts' in a dense model); pick targets it has")
  # A·B has rank at most min(in, out): a larger r adds parameters (up to
  # hundreds of times the model's) and nothing else.
  narrowest = min(sides, key=sides.get)
  if rank > sides[narrowest]:
    raise UserInputError(
        f'lora.rank={rank} is larger than {narrowest} seen as a matrix '
        f'allows (its smaller side is {sides[narrowest]}); set '
        f'--config.lora.rank <= {sides[narrowest]}')
  return out


def num_trainable(shapes: dict[str, tuple[int, ...]], targets,
                  rank: int) -> int:
  """r · (in + out) per adapted matrix, times E for expert weights."""
  return sum(math.prod(a) + math.prod(b)
             for a, b in adapter_shapes(shapes, targets, rank).values())


def init_adapters(key: jax.Array, shapes, targets, rank: int) -> dict:
  """The adapter tree: A ~ N(0, 1/in) per matrix, B = 0 (so W' = W)."""
  tree = {}
  for i, (path, (a_shape, b_shape)) in enumerate(
      sorted(adapter_shapes(shapes, targets, rank).items())):
    batch, _ = _layout(path, len(shapes[path]))
    fan_in = math.prod(a_shape[batch:-1])
    node = tree
    for part in path.split('/'):
      node = node.setdefault(part, {})
    node['a'] = jax.random.normal(jax.random.fold_in(key, i), a_shape,
                                  jnp.float32) / math.sqrt(fan_in)
    node['b'] = jnp.zeros(b_shape, jnp.float32)
  return tree


def delta(a: jax.Array, b: jax.Array, shape: tuple[int, ...],
          batch: int) -> jax.Array:
  """A · B as a weight of `shape`: [*lead, in..., r] x [*lead, r, out...]."""
  rank = a.shape[-1]
  a2 = a.reshape(a.shape[:batch] + (-1, rank))
  b2 = b.reshape(b.shape[:batch] + (rank, -1))
  return jnp.matmul(a2, b2).reshape(shape)


def merge(params, adapters: dict, scale: float):
  """`params` with W + scale · A · B at every adapted path (scale = α/r).

  Works on an nnx.State or a plain tree, inside or outside jit; leaves
  without an adapter are returned as they are (bitwise).
  """
  flat = flatten(adapters)

  def fold(keys, w):
    path = key_path(keys)
    if path + '/a' not in flat:
      return w
    batch, _ = _layout(path, w.ndim)
    d = delta(flat[path + '/a'], flat[path + '/b'], w.shape, batch)
    return w + (scale * d).astype(w.dtype)

  return jax.tree_util.tree_map_with_path(fold, params)
