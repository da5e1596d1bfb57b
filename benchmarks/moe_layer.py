"""MoE layer forward + backward against a dense FFN of the same width.

  python benchmarks/moe_layer.py [--out=runs/benchmarks/moe_layer.json]

Shapes (issue 5): T = 8192 tokens in G = 8 groups of S = 1024, D = 256,
F = 1024, E = 8, float32. Every dispatcher, top-1 (Switch) and top-2 (GShard,
second policy 'all'), train capacity factors 1.0 / 1.25 / 2.0.

overhead = MoE time / (K · cf · dense time) for capacity modes and
MoE time / (K · dense time) for dropless: 1.0 is the work a perfect
implementation must do (the padded expert matmuls), anything above is
routing, dispatch and combine.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # pylint: disable=g-import-not-at-top
from moe_jax.core import MoEConfig, moe_apply
from moe_jax.core.dispatch import DISPATCHERS, ExpertInputs
from moe_jax.core.experts import gelu_mlp

T, S, D, F, E = 8192, 1024, 256, 1024, 8


def make_inputs():
  keys = jax.random.split(jax.random.key(0), 4)
  params = {'router_kernel': 0.02 * jax.random.normal(keys[0], (D, E)),
            'wi': 0.02 * jax.random.normal(keys[1], (E, D, F)),
            'wo': 0.02 * jax.random.normal(keys[2], (E, F, D))}
  x = jax.random.normal(keys[3], (T // S, S, D))
  return params, x


def dense_step(params, x):
  """A blocking fwd+bwd of the dense GELU FFN of width F."""
  dense = {'wi': params['wi'][:1], 'wo': params['wo'][:1]}

  def loss(p, x):
    y = gelu_mlp(p, ExpertInputs(x.reshape(1, -1, x.shape[-1])))
    return jnp.mean(jnp.square(y))

  step = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return lambda: jax.block_until_ready(step(dense, x))


def moe_step(params, x, cfg, with_cost: bool = False):
  """A blocking fwd+bwd of the MoE layer (and XLA's cost analysis of it)."""
  def loss(p, x):
    y, aux = moe_apply(p, x, cfg, train=True)
    return jnp.mean(jnp.square(y)) + aux['aux_loss']

  step = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()
  run = lambda: jax.block_until_ready(step(params, x))
  if not with_cost:
    return run
  cost = step.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  hlo = step.as_text()
  return run, {'GFLOP': cost.get('flops', 0.0) / 1e9,
               'GB_accessed': cost.get('bytes accessed', 0.0) / 1e9,
               'GB_written': common.written_bytes(hlo) / 1e9,
               # The static analysis counts a loop's body once, not per trip.
               'has_loop': ' while(' in hlo}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--dispatchers',
                      default='index,einsum,dropless,dropless_ragged')
  parser.add_argument(
      '--out', default=common.default_out('moe_layer'),
      help='JSON results (default: untracked runs/benchmarks/); '
      '--out=benchmarks/results/moe_layer.json updates the committed ones')
  args = parser.parse_args()

  params, x = make_inputs()
  dense = dense_step(params, x)
  rows = []
  for dispatcher in args.dispatchers.split(','):
    for router, k in (('switch', 1), ('gshard', 2)):
      capacity_free = not DISPATCHERS[dispatcher].needs_capacity
      cfs = (None,) if capacity_free else (1.0, 1.25, 2.0)
      for cf in cfs:
        cfg = MoEConfig(num_experts=E, top_k=k, router=router, d_ff=F,
                        dispatcher=dispatcher, capacity_factor=cf or 1.0,
                        group_size=S, router_options=(
                            {'gshard': {'second_policy': 'all'}}
                            if router == 'gshard' else None))
        # Dense and MoE alternate, so the ratio sees the same machine state.
        seconds = common.time_interleaved(
            {'dense': dense, 'moe': moe_step(params, x, cfg)},
            rounds=args.repeats)
        floor = k * (cf or 1.0) * seconds['dense']
        rows.append({'dispatcher': dispatcher, 'router': f'{router} top-{k}',
                     'cf': cf, 'dense_ms': 1e3 * seconds['dense'],
                     'moe_ms': 1e3 * seconds['moe'],
                     'overhead': seconds['moe'] / floor})
        print(rows[-1], flush=True)
  common.print_table(rows, ['dispatcher', 'router', 'cf', 'dense_ms', 'moe_ms',
                            'overhead'])
  common.write_json(args.out, {'shapes': dict(T=T, S=S, D=D, F=F, E=E),
                               'rows': rows})


if __name__ == '__main__':
  main()
