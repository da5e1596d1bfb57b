"""Device meshes from config, checked before anything compiles.

Axis names are fixed: 'data' (pure data parallelism), 'expert' (expert
parallelism; it also carries batch, so the tokens of a step are sharded over
data × expert) and 'model' (tensor parallelism of the FFN hidden width and
attention heads). Axes are created as Auto so the compiler propagates
shardings from the annotations we give it.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
from jax.sharding import AxisType, Mesh

from moe_jax.errors import UserInputError

AXES = ('data', 'expert', 'model')
# Mesh axes that split the batch (tokens) of a step.
BATCH_AXES = ('data', 'expert')


def make_mesh(shape: Sequence[int],
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, expert, model) mesh over `devices` (default: all devices).

  Args:
    shape: sizes of the three axes, e.g. (2, 4, 1). One entry may be -1: it
      takes whatever the device count leaves.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = [int(s) for s in shape]
  if len(shape) != len(AXES):
    raise UserInputError(
        f'mesh shape {tuple(shape)} must have one size per axis {AXES}; set '
        '--config.mesh.shape, e.g. "(1, 8, 1)".')
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise UserInputError(
        f'mesh shape {tuple(shape)}: sizes must be positive, with at most '
        'one -1 (fill with the remaining devices).')
  if -1 in shape:
    rest = math.prod(s for s in shape if s != -1)
    if len(devices) % rest:
      raise UserInputError(
          f'mesh shape {tuple(shape)} cannot fill {len(devices)} devices; '
          'make the product of the fixed sizes divide the device count.')
    shape[shape.index(-1)] = len(devices) // rest
  if math.prod(shape) != len(devices):
    raise UserInputError(
        f'mesh shape {tuple(shape)} needs {math.prod(shape)} devices but '
        f'{len(devices)} are available; set --config.mesh.shape so the '
        'product of its sizes equals the device count (or use -1 for one axis).')
  return jax.make_mesh(tuple(shape), AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=devices)


def axis_size(mesh, name: str) -> int:
  return dict(zip(mesh.axis_names, mesh.axis_sizes)).get(name, 1)


def batch_parallelism(mesh) -> int:
  return math.prod(axis_size(mesh, a) for a in BATCH_AXES)


def check_fits(mesh, *, num_experts: int, batch_size: int,
               num_heads: int | None = None, d_ff: int | None = None,
               num_groups: int | None = None,
               num_kv_heads: int | None = None,
               fsdp_d_model: int | None = None) -> None:
  """Raises UserInputError for a model or batch that the mesh cannot split.

  num_groups: routing groups per batch (G) when moe.group_size sets it;
    expert parallelism splits groups, not sequences, over data × expert.
  fsdp_d_model: with mesh.fsdp, the model width D, which FSDP_RULES split
    over 'data' in every weight (rules.py).
  """
  ep = axis_size(mesh, 'expert')
  if num_experts % ep:
    raise UserInputError(
        f'num_experts={num_experts} is not divisible by the expert axis '
        f'({ep}); use a multiple of {ep} experts or a smaller mesh expert axis.')
  dp = batch_parallelism(mesh)
  if batch_size % dp:
    raise UserInputError(
        f'batch_size={batch_size} is not divisible by the data × expert axes '
        f'({dp}); use a multiple of {dp}.')
  if num_groups is not None and num_groups % dp:
    raise UserInputError(
        f'{num_groups} routing groups (batch_size·seq_len / moe.group_size) '
        f'are not divisible by the data × expert axes ({dp}); use a '
        f'group_size that leaves a multiple of {dp} groups, or leave it unset '
        '(one group per sequence).')
  mp = axis_size(mesh, 'model')
  for name, value in (('num_heads', num_heads), ('d_ff', d_ff),
                      ('num_kv_heads', num_kv_heads)):
    if value is not None and value % mp:
      raise UserInputError(
          f'{name}={value} is not divisible by the model axis ({mp}).')
  data = axis_size(mesh, 'data')
  if fsdp_d_model is not None and fsdp_d_model % data:
    # JAX refuses uneven shards, but only when the state is first placed,
    # with a traceback; this says which setting to change, before anything.
    raise UserInputError(
        f'mesh.fsdp=True splits d_model={fsdp_d_model} over the data axis '
        f'({data}), which does not divide it; use a data axis that divides '
        f'{fsdp_d_model} or set --config.mesh.fsdp=False.')
