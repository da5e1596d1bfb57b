"""What a model costs, from its abstract parameters: counts, weight and
optimizer memory per device, training FLOPs per token.

Nothing is allocated: the parameters come from `jax.eval_shape`, so a
314B-parameter preset is inspected in seconds on a laptop. Per-device sizes
follow the same logical-axis rules (moe_jax/parallel/rules.py) the trainer
shards with, so they are what each device would hold.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

from flax import nnx

from moe_jax.errors import UserInputError
from moe_jax.models import flops as flops_lib
from moe_jax.models.config import ModelConfig
from moe_jax.models.param_count import count_leaves, shapes_and_axes
from moe_jax.models.transformer import Block, TransformerLM
from moe_jax.parallel import mesh as mesh_lib
from moe_jax.parallel import rules as rules_lib

BYTES = {'fp32': 4, 'bf16': 2, 'int8': 1}
# Adam keeps two moments (m, v) per parameter, in float32 here (optax's
# default for float32 parameters).
ADAM_MOMENTS = 2


@dataclasses.dataclass(frozen=True)
class MeshShape:
  """Axis names and sizes, enough for the sharding rules; no devices."""
  axis_names: tuple[str, ...]
  axis_sizes: tuple[int, ...]

  @property
  def num_devices(self) -> int:
    return math.prod(self.axis_sizes)


def parse_mesh(text: str) -> MeshShape:
  """'data:8,expert:8' -> MeshShape over (data, expert, model); unnamed
  axes are 1."""
  sizes, named = dict.fromkeys(mesh_lib.AXES, 1), set()
  for part in filter(None, (p.strip() for p in text.split(','))):
    name, _, size = part.partition(':')
    if name not in sizes or not size.isdigit() or int(size) < 1:
      raise UserInputError(
          f'--mesh entry {part!r} is not AXIS:SIZE with AXIS in '
          f'{mesh_lib.AXES} and SIZE >= 1; e.g. --mesh=data:8,expert:8.')
    if name in named:  # The later entry would silently win.
      raise UserInputError(
          f'--mesh names axis {name!r} twice ({text!r}); give each axis once, '
          'e.g. --mesh=data:8,expert:8.')
    named.add(name)
    sizes[name] = int(size)
  return MeshShape(tuple(sizes), tuple(sizes.values()))


def param_shapes(config: ModelConfig) -> list[tuple[tuple[int, ...], tuple]]:
  """(shape, logical axes) of every parameter, from jax.eval_shape.

  Blocks of one kind (dense or MoE) have identical parameters, so each kind
  is traced once and repeated: tracing a whole 64-layer model costs
  seconds, as each traced parameter init grows the trace the next one
  inspects.
  """
  def abstract(make):
    return shapes_and_axes(nnx.state(nnx.eval_shape(make), nnx.Param))

  # Everything outside the blocks, from a one-layer dense twin.
  outer = dataclasses.replace(config, num_layers=1, moe_every=0,
                              first_dense_layers=0)
  model = nnx.eval_shape(lambda: TransformerLM(outer, rngs=nnx.Rngs(0)))
  leaves = shapes_and_axes(nnx.state(
      model, nnx.All(nnx.Param, nnx.Not(nnx.PathContains('blocks')))))
  kinds = {}
  for i in range(config.num_layers):
    kind = config.is_moe_layer(i)
    if kind not in kinds:
      kinds[kind] = abstract(lambda i=i: Block(config, i, rngs=nnx.Rngs(0)))
    leaves += kinds[kind]
  return leaves


def _shard_size(shape, spec, sizes: Mapping[str, int]) -> int:
  """Elements of one device's shard: each dim split over its mesh axes
  (rounded up, as XLA pads an uneven split)."""
  total = 1
  for dim, axes in zip(shape, tuple(spec) + (None,) * len(shape)):
    axes = (axes,) if isinstance(axes, str) else (axes or ())
    total *= -(-dim // math.prod(sizes[a] for a in axes))
  return total


def per_device_params(leaves, mesh: MeshShape,
                      rules=rules_lib.DEFAULT_RULES) -> int:
  """Parameters one device holds: every leaf's (largest) shard under the
  trainer's sharding rules (FSDP_RULES with mesh.fsdp)."""
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  return sum(_shard_size(shape, rules_lib.logical_to_spec(axes, rules, mesh),
                         sizes) for shape, axes in leaves)


@dataclasses.dataclass(frozen=True)
class Cost:
  """A model's size and cost; memory in bytes."""
  total: int
  active: int
  device_params: int
  mesh: MeshShape
  fsdp: bool  # Whether device_params are under FSDP_RULES.
  train_flops_per_token: int  # moe_jax/models/flops.py, as the trainer logs.

  def weight_bytes(self, dtype: str) -> int:
    return self.total * BYTES[dtype]

  @property
  def device_weight_bytes(self) -> int:
    return self.device_params * BYTES['fp32']  # Parameters stay float32.

  @property
  def device_adam_bytes(self) -> int:
    return ADAM_MOMENTS * self.device_params * BYTES['fp32']


def model_cost(config: ModelConfig, mesh: MeshShape,
               seq_len: int | None = None, fsdp: bool = False) -> Cost:
  """Counts, per-device memory and training FLOPs of `config` on `mesh`.

  seq_len: L of the attention FLOPs (and S of a routing group when
    moe.group_size is unset); default the model's max_len.
  fsdp: size the devices as mesh.fsdp=True places the weights and moments.

  Raises UserInputError when the mesh cannot split the model the way the
  trainer would (experts over 'expert', heads and FFN width over 'model',
  with fsdp D over 'data').
  """
  mesh_lib.check_fits(mesh, num_experts=config.moe.num_experts,
                      batch_size=mesh_lib.batch_parallelism(mesh),
                      num_heads=config.num_heads, d_ff=config.d_ff,
                      num_kv_heads=config.kv_heads,
                      fsdp_d_model=config.d_model if fsdp else None)
  leaves = param_shapes(config)
  seq_len = seq_len or config.max_len
  # Expert passes per token as the run header counts them (trainer.py):
  # top_k, or for null experts, expert choice and Soft MoE their average.
  passes = config.moe.expert_passes_per_token(config.moe.group_size or seq_len)
  total, active = count_leaves(leaves, passes, config.moe.num_experts)
  flops = flops_lib.for_model(config, active, seq_len)
  rules = rules_lib.FSDP_RULES if fsdp else rules_lib.DEFAULT_RULES
  return Cost(total, active, per_device_params(leaves, mesh, rules), mesh,
              fsdp, flops)
