"""Where our layer's forward time goes at hf_block.py's shapes.

  python benchmarks/hf_block_parts.py [--clock=cpu] [--experts=8 --top-k=2]

Forward only, jitted, pinned to one CPU and single-threaded as hf_block.py
runs it. Rows: the whole layer with each dispatcher; 'router' (logits and
top-k alone); 'matmuls' (the experts' FLOPs as three plain matmuls over the
T·K rows with one expert's weights: what a perfect dispatch would cost);
'per_expert' (the same as one batched matmul over E balanced buffers).
A layer near 'matmuls' is bound by the matmul kernel, not by its routing or
token movement. expert_GFLOP_per_s is the experts' FLOPs over each row's
time, so it compares the layer rows only.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common, hf_block  # pylint: disable=g-import-not-at-top


def steps(shapes: dict):
  """{name: blocking call} for the rows above."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from moe_jax.core import MoEConfig, moe_apply  # pylint: disable=g-import-not-at-top
  from moe_jax.core.dispatch import DISPATCHERS  # pylint: disable=g-import-not-at-top
  w = hf_block.hf_weights(shapes)
  p = jax.tree.map(jnp.asarray, hf_block.our_params(w))
  x = jnp.asarray(w['x'])
  d, f, e, k = (shapes[n] for n in 'DFEK')

  def router(p, x):
    top, index = jax.lax.top_k(x.reshape(-1, d) @ p['router_kernel'], k)
    return jax.nn.softmax(top, axis=-1), index

  def swiglu(r, wg, wi, wo):
    return (jax.nn.silu(r @ wg) * (r @ wi)) @ wo

  def matmuls(p, x):
    rows = jnp.tile(x.reshape(-1, d), (k, 1))
    return swiglu(rows, p['wi_gate'][0], p['wi'][0], p['wo'][0])

  def per_expert(p, x):
    rows = jnp.tile(x.reshape(-1, d), (k, 1)).reshape(e, -1, d)
    return jax.vmap(swiglu)(rows, p['wi_gate'], p['wi'], p['wo'])

  fns = {'router': router, 'matmuls': matmuls, 'per_expert': per_expert}
  for name in DISPATCHERS:
    if name == 'einsum':
      continue  # The O(S·E·C) reference: not a candidate.
    cfg = MoEConfig(num_experts=e, top_k=k, router='topk',
                    expert_type='swiglu', d_ff=f, dispatcher=name,
                    eval_capacity_factor=1.25)
    fns[name] = lambda p, x, cfg=cfg: moe_apply(p, x, cfg, train=False)[0]
  compiled = {n: jax.jit(fn).lower(p, x).compile() for n, fn in fns.items()}
  return {n: (lambda c=c: jax.block_until_ready(c(p, x)))
          for n, c in compiled.items()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--clock', choices=sorted(hf_block.CLOCKS),
                      default='wall')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--inner', type=int, default=3)
  parser.add_argument('--experts', type=int, default=hf_block.SHAPES['E'])
  parser.add_argument('--top-k', type=int, default=hf_block.SHAPES['K'])
  parser.add_argument('--d-ff', type=int, default=hf_block.SHAPES['F'])
  parser.add_argument('--out', default=common.default_out('hf_block_parts'))
  args = parser.parse_args(argv)
  shapes = dict(hf_block.SHAPES, E=args.experts, K=args.top_k, F=args.d_ff)
  hf_block.pin(1)
  fns = steps(shapes)
  clock = hf_block.CLOCKS[args.clock]
  samples = {n: [] for n in fns}
  for fn in fns.values():
    fn()
  for _ in range(args.repeats):  # Interleaved rounds of --inner calls each.
    for name, fn in fns.items():
      start = clock()
      for _ in range(args.inner):
        fn()
      samples[name].append((clock() - start) / args.inner)
  flops = 2 * 3 * shapes['B'] * shapes['L'] * shapes['K'] * shapes['D'] * (
      shapes['F'])
  rows = [{'part': n, 'ms': 1e3 * statistics.median(s),
           'expert_GFLOP_per_s': flops / statistics.median(s) / 1e9}
          for n, s in samples.items()]
  common.print_table(rows, ['part', 'ms', 'expert_GFLOP_per_s'])
  common.write_json(args.out, {'shapes': shapes, 'clock': args.clock,
                               'rows': rows})


if __name__ == '__main__':
  main()
