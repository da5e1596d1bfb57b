"""Fine-grained experts: MoE layer time as the number of experts grows.

  python benchmarks/fine_grained.py [--dispatchers=index,fused,dropless,dropless_fused] \
      [--out=runs/benchmarks/fine_grained.json]

T = 8192 tokens (G = 8 groups of 1024), D = 256, float32, forward + backward,
top-k routing (Mixtral-style gates), train capacity factor 1.25.

  fixed active FLOPs: E ∈ {8, 16, 32, 64}, F = 1024·8/E, K = E/8, so every
    token always uses K·F = 1024 hidden units (DeepSeekMoE's fine-grained
    split). Target: E = 64 costs <= 1.3x E = 8. Then E ∈ {128, 256} at
    K = 8, F = 128: the same active FLOPs over more experts (OLMoE: 64
    top-8; DeepSeek-V3: 256 top-8).
  fixed F: E ∈ {8, 16, 32, 64}, F = 1024, K = 1; active FLOPs are constant
    and total parameters grow with E.

Every dispatcher of a series is timed in the same interleaved rounds.
Columns: ms (median) and vs E=8, the time over the fastest E = 8 row of the
series among dispatchers of the same kind (capacity or dropless: coarse MoE
at its best, for the same work); GFLOP and
GB_accessed, XLA's static cost analysis of the compiled step; GB_written,
the bytes of the buffers the step materialises (common.written_bytes), which
tracks token movement where XLA's count of fused gathers does not. The cost
columns are left empty for a step with a loop (the fused dispatcher's expert
loop): the static analysis counts a loop body once, not once per trip.
--no-time prints the cost columns alone (for a machine busy with other
work).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common, moe_layer  # pylint: disable=g-import-not-at-top
from moe_jax.core import MoEConfig
from moe_jax.core.dispatch import DISPATCHERS

T, S, D = 8192, 1024, 256
EXPERTS = (8, 16, 32, 64)
FIXED_ACTIVE = {e: (1024 * 8 // e, e // 8) for e in EXPERTS} | {
    128: (128, 8), 256: (128, 8)}  # E -> (F, K); K·F = 1024 throughout.


def layer_step(e: int, f: int, k: int, dispatcher: str):
  cfg = MoEConfig(num_experts=e, top_k=k, router='topk' if k > 1 else 'switch',
                  d_ff=f, dispatcher=dispatcher, group_size=S)
  keys = jax.random.split(jax.random.key(e * 1000 + f), 4)
  params = {'router_kernel': 0.02 * jax.random.normal(keys[0], (D, e)),
            'wi': 0.02 * jax.random.normal(keys[1], (e, D, f)),
            'wo': 0.02 * jax.random.normal(keys[2], (e, f, D))}
  x = jax.random.normal(keys[3], (T // S, S, D))
  run, cost = moe_layer.moe_step(params, x, cfg, with_cost=True)
  if cost.pop('has_loop'):  # Counted once per loop body: not comparable.
    cost = dict.fromkeys(cost)
  return run, cost


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dispatchers',
                      default='index,fused,dropless,dropless_fused')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--no-time', action='store_true',
                      help='cost analysis only; no timing')
  parser.add_argument(
      '--out', default=common.default_out('fine_grained'),
      help='JSON results (default: untracked runs/benchmarks/); '
      '--out=benchmarks/results/fine_grained.json updates the committed ones')
  args = parser.parse_args()

  dispatchers = args.dispatchers.split(',')
  rows = []
  for series, shapes in (
      ('fixed active FLOPs', FIXED_ACTIVE),
      ('fixed F, K=1', {e: (1024, 1) for e in EXPERTS})):
    built = {(d, e): layer_step(e, *fk, d)
             for d in dispatchers for e, fk in shapes.items()}
    seconds = None
    if not args.no_time:
      seconds = common.time_interleaved({k: b[0] for k, b in built.items()},
                                        rounds=args.repeats)
      # Capacity and dropless layers do different work (cf·K·T rows against
      # K·T), so each is compared with the fastest E = 8 of its own kind.
      kind = lambda d: DISPATCHERS[d].needs_capacity
      base = {d: min(seconds[(o, EXPERTS[0])] for o in dispatchers
                     if kind(o) == kind(d)) for d in dispatchers}
    for (d, e), (run, cost) in built.items():
      f, k = shapes[e]
      # XLA's static cost analysis of the step: FLOPs and bytes show whether
      # a slowdown is compute or data movement.
      row = {'series': series, 'dispatcher': d, 'E': e, 'F': f, 'K': k, **cost}
      if seconds:
        row.update({'ms': 1e3 * seconds[(d, e)],
                    'vs E=8': seconds[(d, e)] / base[d]})
      rows.append(row)
      print(rows[-1], flush=True)
  common.print_table(rows, ['series', 'dispatcher', 'E', 'F', 'K', 'ms',
                            'vs E=8', 'GFLOP', 'GB_accessed', 'GB_written'])
  common.write_json(args.out, {'dispatchers': dispatchers,
                               'shapes': dict(T=T, S=S, D=D), 'rows': rows,
                               'timed': not args.no_time})


if __name__ == '__main__':
  main()
