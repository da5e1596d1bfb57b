"""Expert-parallel MoE layer on 8 host devices: time, all-to-all bytes, memory.

  python benchmarks/expert_parallel.py [--out=runs/benchmarks/expert_parallel.json]

A fixed MoE layer (B·L = 64·128 tokens, D=256, F=1024, E=8, Switch top-1,
capacity factor 1.25, index dispatcher) runs forward + backward, jitted with
real input shardings, on each (data, expert, model) mesh of the 8 CPU host
devices. Reported per layout:
  step_ms        median time of one forward + backward;
  a2a_count      all-to-all ops in the compiled HLO;
  a2a_MiB/step   bytes that leave their device in all-to-alls per step,
                 from shapes: 4 exchanges (2 forward, 2 backward) of each
                 device's [E, G_l·C, D] buffer, of which (EP-1)/EP moves;
  expert_MiB/dev expert weights held by one device (total / EP).
On CPU the 8 "devices" share 2 cores, so times show overhead, not speedup.

Each layout runs twice: 'shard_map' is the library's path (explicit
jax.lax.all_to_all); 'constraints' writes the same math on global arrays and
only constrains the dispatched buffer [E, G·C, D] to be split over the expert
axis, leaving the collectives to the SPMD partitioner. Layouts with an
expert axis also run 'dropless' (the dropless dispatcher, no capacity): on
CPU its exchange is the dense all-to-all of [EP, M, D] per-destination
buffers, M = G_l·S·K local choices (parallel/dropless_ep.py), so its
a2a_MiB/step counts the whole static bound, padding included; the ragged
all-to-all of GPU/TPU would move only the routed rows, about 1/EP of that.
"""

from __future__ import annotations

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import argparse  # pylint: disable=g-import-not-at-top,g-bad-import-order
import pathlib
import sys

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common
from moe_jax.core import MoEConfig
from moe_jax.parallel.expert_parallel import parallel_moe_apply
from moe_jax.core.dispatch import INDEX
from moe_jax.core.experts import gelu_mlp
from moe_jax.core.moe import group_tokens
from moe_jax.core.routing import RouterInputs
from moe_jax.layers.moe import EXPERT_IN_AXES, EXPERT_OUT_AXES
from moe_jax.parallel import make_mesh
from moe_jax.parallel.rules import logical_to_spec

B, L, D, F, E = 64, 128, 256, 1024, 8
LAYOUTS = [(8, 1, 1), (4, 2, 1), (2, 4, 1), (1, 8, 1), (1, 4, 2)]


def layer_inputs():
  """(params, x) of the benchmark layer, fixed by seed 0."""
  keys = jax.random.split(jax.random.key(0), 4)
  params = {'router_kernel': 0.02 * jax.random.normal(keys[0], (D, E)),
            'wi': 0.02 * jax.random.normal(keys[1], (E, D, F)),
            'wo': 0.02 * jax.random.normal(keys[2], (E, F, D))}
  return params, jax.random.normal(keys[3], (B, L, D))


def place(params, x, mesh):
  """(params, x, their shardings) on `mesh`, as training places them."""
  spec = lambda axes: NamedSharding(mesh, logical_to_spec(axes, mesh=mesh))
  p_sh = {'router_kernel': spec(('embed', None)), 'wi': spec(EXPERT_IN_AXES),
          'wo': spec(EXPERT_OUT_AXES)}
  x_sh = spec(('batch', None, None))
  return jax.device_put(params, p_sh), jax.device_put(x, x_sh), p_sh, x_sh


def _run(step, p, xs, mesh):
  with jax.set_mesh(mesh):
    jax.block_until_ready(step(p, xs))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--no-time', action='store_true',
                      help='compile and count collectives only; no timing')
  parser.add_argument(
      '--out', default=common.default_out('expert_parallel'),
      help='JSON results (default: untracked runs/benchmarks/); '
      '--out=benchmarks/results/expert_parallel.json updates the committed ones')
  args = parser.parse_args()

  cfg = MoEConfig(num_experts=E, d_ff=F, capacity_factor=1.25)
  dropless_cfg = MoEConfig(num_experts=E, d_ff=F, dispatcher='dropless')
  capacity = cfg.capacity(L, train=True)
  params, x = layer_inputs()

  def loss(p, x, cfg=cfg):
    y, aux = parallel_moe_apply(p, x, cfg, train=True)
    return jnp.mean(jnp.square(y)) + aux['aux_loss']

  def dropless_loss(p, x):
    return loss(p, x, dropless_cfg)

  def constrained_loss(p, x):
    """The same layer with sharding constraints instead of shard_map."""
    xg = group_tokens(x, cfg.group_size)
    logits = xg @ p['router_kernel']
    plan, aux = cfg.route(RouterInputs(logits, xg, {}), train=True,
                          capacity=capacity)
    inputs, ctx = INDEX.dispatch(xg, plan)
    buffers = P('expert', 'data', None)  # Experts split, rows over data.
    xe = jax.lax.with_sharding_constraint(inputs.x, buffers)
    y = gelu_mlp({'wi': p['wi'], 'wo': p['wo']}, inputs._replace(x=xe))
    y = jax.lax.with_sharding_constraint(y, buffers)
    out = INDEX.combine(y, plan, ctx)
    return jnp.mean(jnp.square(out)) + cfg.load_balance_weight * aux[
        'load_balance_loss'] + cfg.z_loss_weight * aux['z_loss']

  rows, runs = [], {}
  for layout, (variant, fn) in [(l, v) for l in LAYOUTS for v in (
      ('shard_map', loss), ('constraints', constrained_loss),
      ('dropless', dropless_loss))]:
    if variant != 'shard_map' and layout[1] == 1:
      continue  # Without an expert axis these add nothing to compare.
    mesh = make_mesh(layout)
    p, xs, p_sh, x_sh = place(params, x, mesh)
    with jax.set_mesh(mesh):
      step = jax.jit(jax.grad(fn, argnums=(0, 1)), in_shardings=(p_sh, x_sh),
                     out_shardings=(p_sh, x_sh))
      hlo = step.lower(p, xs).compile().as_text()
    runs[(layout, variant)] = (
        lambda step=step, p=p, xs=xs, mesh=mesh: _run(step, p, xs, mesh))
    data, ep, _ = layout
    groups_per_device = B // (data * ep)
    buffer_bytes = E * groups_per_device * capacity * D * 4
    if variant == 'dropless':  # [EP, M, D], M = G_l·S·K (K = 1).
      buffer_bytes = ep * groups_per_device * L * D * 4
    moved = 4 * (ep - 1) / ep * buffer_bytes * len(jax.devices())
    expert_bytes = p['wi'].addressable_shards[0].data.nbytes + (
        p['wo'].addressable_shards[0].data.nbytes)
    rows.append({'mesh (data,expert,model)': str(layout), 'variant': variant,
                 'a2a_count': hlo.count('all-to-all('),
                 'all_gathers': hlo.count('all-gather('),
                 'all_reduces': hlo.count('all-reduce('),
                 'a2a_MiB/step': moved / 2**20,
                 'expert_MiB/dev': expert_bytes / 2**20})
  # Interleaved rounds, so machine drift does not favour one layout.
  if not args.no_time:
    seconds = common.time_interleaved(runs, rounds=args.repeats)
    for row, key in zip(rows, runs):
      row['step_ms'] = 1e3 * seconds[key]
  common.print_table(rows, ['mesh (data,expert,model)', 'variant', 'step_ms',
                            'a2a_count', 'all_gathers', 'all_reduces',
                            'a2a_MiB/step', 'expert_MiB/dev'])
  common.write_json(args.out, {'timed': not args.no_time, 'layer': dict(B=B, L=L, D=D, F=F, E=E, K=1,
                                             capacity_factor=1.25, C=capacity),
                               'rows': rows})


if __name__ == '__main__':
  main()
