"""Where fine-grained MoE time goes: routing, token movement, experts.

  python benchmarks/fine_grained_parts.py [--repeats 7] \
      [--out=runs/benchmarks/fine_grained_parts.json]

The fine_grained.py layer (T = 8192, D = 256, index dispatcher, cf 1.25,
forward + backward) at E = 8 (K = 1, F = 1024), 64 and 256 (K = 8, F = 128),
three ways, through moe_apply's run_experts argument:

  route  router, capacity slots, losses and metrics; the tokens are only
         scaled by their summed gates (no dispatch, no experts);
  move   route + dispatch + combine, with the experts replaced by a scale;
  full   the whole layer;

and two more: logits, the router's matmul x @ w_r alone (part of route), and
fused, the whole layer with dispatcher='fused', whose movement happens inside
the expert loop and so cannot be split off.

move - route is the token movement; full - move the expert MLPs. The
rounds are interleaved, so on a shared machine the ratios between rows
mean more than the milliseconds.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # pylint: disable=g-import-not-at-top
from moe_jax.core import MoEConfig
from moe_jax.core.dispatch import run_local
from moe_jax.core.moe import moe_apply

T, S, D = 8192, 1024, 256
SHAPES = ((8, 1024, 1), (64, 128, 8), (256, 128, 8))  # (E, F, K)


def _move_only(x, plan, params, dispatcher, expert_fn):
  del expert_fn
  inputs, ctx = dispatcher.dispatch(x, plan)
  return dispatcher.combine(inputs.x * params['wi'][0, 0, 0], plan, ctx)


def _route_only(x, plan, params, dispatcher, expert_fn):
  del dispatcher, expert_fn
  gate = jnp.sum(plan.combine_weights, axis=-1, keepdims=True)
  return x * gate * params['wi'][0, 0, 0]


PARTS = {'route': _route_only, 'move': _move_only, 'full': run_local,
         'fused': run_local}


def _step(e, f, k, run, part):
  cfg = MoEConfig(num_experts=e, top_k=k, router='topk' if k > 1 else 'switch',
                  d_ff=f, group_size=S,
                  dispatcher='fused' if part == 'fused' else 'index')
  keys = jax.random.split(jax.random.key(0), 4)
  params = {'router_kernel': 0.02 * jax.random.normal(keys[0], (D, e)),
            'wi': 0.02 * jax.random.normal(keys[1], (e, D, f)),
            'wo': 0.02 * jax.random.normal(keys[2], (e, f, D))}
  x = jax.random.normal(keys[3], (T // S, S, D))

  def loss(p, x):
    if part == 'logits':  # The router matmul and its gradients alone.
      return jnp.mean(jnp.square(x @ p['router_kernel']))
    y, aux = moe_apply(p, x, cfg, train=True, run_experts=run)
    return jnp.mean(jnp.square(y)) + aux['aux_loss']

  step = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()
  return lambda: jax.block_until_ready(step(params, x))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=7)
  parser.add_argument('--out', default=common.default_out('fine_grained_parts'))
  args = parser.parse_args()
  parts = {'logits': None, **PARTS}
  runs = {(shape, part): _step(*shape, run, part)
          for shape in SHAPES for part, run in parts.items()}
  seconds = common.time_interleaved(runs, rounds=args.repeats, inner=1)
  rows = []
  for e, f, k in SHAPES:
    ms = {part: 1e3 * seconds[((e, f, k), part)] for part in parts}
    rows.append({'E': e, 'F': f, 'K': k, 'logits_ms': ms['logits'],
                 'route_ms': ms['route'], 'fused_ms': ms['fused'],
                 'move_ms': ms['move'], 'full_ms': ms['full'],
                 'movement_ms': ms['move'] - ms['route'],
                 'experts_ms': ms['full'] - ms['move']})
  for row in rows:
    row['full vs E=8'] = row['full_ms'] / rows[0]['full_ms']
    row['fused vs E=8'] = row['fused_ms'] / rows[0]['fused_ms']
  columns = ['E', 'F', 'K', 'logits_ms', 'route_ms', 'movement_ms',
             'experts_ms', 'full_ms', 'full vs E=8', 'fused_ms', 'fused vs E=8']
  common.print_table(rows, columns)
  common.write_json(args.out, {'shapes': dict(T=T, S=S, D=D), 'rows': rows})


if __name__ == '__main__':
  main()
