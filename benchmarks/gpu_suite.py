"""The GPU suite (issue 23 item 6): four measurements, one command, one JSON.

  python benchmarks/gpu_suite.py [--out=runs/benchmarks/gpu_suite.json]
  benchmarks/gpu_suite.sh        # the same on the device machine (<= 8 min)
  python benchmarks/gpu_suite.py --cpu-smoke --peak-flops=1e12  # tiny, CPU

Parts (bfloat16 compute, parameters and router in float32):
  layer    forward + backward of the MoE layer for every registered
           dispatcher (top-2 'topk' router, E = 8, capacity factor 1.25 for
           the capacity dispatchers) over a dense GELU FFN of width K·F: the
           same active FLOPs, so 1.0 is a free router and dispatch (a
           capacity dispatcher also pays its cf = 1.25 of padding).
  ragged   dropless_ragged (jax.lax.ragged_dot, a grouped matmul on GPU)
           against the blocked dropless layouts at a fine-grained shape
           (E = 64, K = 8, the same K·F).
  mfu      one train step of a 126.4M-active-parameter byte-level LM (every
           2nd FFN an E = 8 top-2 MoE of width F/2) and of its dense twin
           (moe_every=0): tokens/s and MFU by moe_jax/models/flops.py's count
           and peak table (--peak-flops overrides the table, e.g. on a CPU).
  ragged_all_to_all
           one exchange of random-length row buffers through
           moe_jax/parallel/ragged_exchange.py on every device, checked
           against the expected rows and timed against the dense
           all-to-all; XLA:CPU cannot compile ragged-all-to-all, so a CPU
           runs its 'dense' implementation; one device: skipped, with the
           reason in the JSON.
--cpu-smoke runs every part at tiny sizes (seconds; tests/test_gpu_suite.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pathlib
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common, gpu_suite_parts, moe_layer  # pylint: disable=g-import-not-at-top
from moe_jax.core import MoEConfig
from moe_jax.core.dispatch import DISPATCHERS

DTYPE = jnp.bfloat16
CF = 1.25  # Capacity dispatchers' train factor (ST-MoE's).


@dataclasses.dataclass(frozen=True)
class Sizes:
  """T tokens in groups of S, width D; layer (E, K, F) and fine (E, K, F)
  keep K·F; lm: D, layers, heads, FFN width, batch, sequence length."""
  T: int
  S: int
  D: int
  layer: tuple[int, int, int]
  fine: tuple[int, int, int]
  lm: tuple[int, int, int, int, int, int]
  a2a_rows: int
  repeats: int
  inner: int


# lm: 10 layers of 12·D² (attention 4·D², FFN 8·D²) at D = 1024, 126.4M
# active parameters in both models (moe_jax.models.accounting.model_cost).
GPU = Sizes(T=16384, S=1024, D=1024, layer=(8, 2, 2048), fine=(64, 8, 512),
            lm=(1024, 10, 16, 4096, 16, 1024), a2a_rows=4096, repeats=7,
            inner=5)
# The smoke's fine shape is its layer shape: the steps compile once.
SMOKE = Sizes(T=64, S=32, D=16, layer=(4, 2, 32), fine=(4, 2, 32),
              lm=(32, 2, 2, 64, 4, 32), a2a_rows=8, repeats=1, inner=1)


def layer_inputs(s: Sizes, e: int, f: int, seed: int = 0):
  keys = jax.random.split(jax.random.key(seed), 4)
  params = {'router_kernel': 0.02 * jax.random.normal(keys[0], (s.D, e)),
            'wi': 0.02 * jax.random.normal(keys[1], (e, s.D, f)),
            'wo': 0.02 * jax.random.normal(keys[2], (e, f, s.D))}
  x = jax.random.normal(keys[3], (s.T // s.S, s.S, s.D), DTYPE)
  return params, x


@functools.cache
def layer_step(s: Sizes, e: int, k: int, f: int, dispatcher: str):
  """A blocking fwd+bwd of the MoE layer, compiled once per shape (the
  smoke sizes share one shape between the layer and ragged parts)."""
  params, x = layer_inputs(s, e, f)
  cfg = MoEConfig(num_experts=e, top_k=k, router='topk', d_ff=f,
                  dispatcher=dispatcher, capacity_factor=CF, group_size=s.S)
  return moe_layer.moe_step(params, x, cfg)


def layer_part(s: Sizes) -> dict:
  e, k, f = s.layer
  x = layer_inputs(s, e, f)[1]
  # The dense twin: one FFN of width K·F, the MoE layer's active FLOPs.
  wide = layer_inputs(s, 1, k * f, seed=1)[0]
  dense = moe_layer.dense_step(wide, x)
  rows = []
  for name, dispatcher in DISPATCHERS.items():
    ms = gpu_suite_parts.timed_ms(
        {'dense': dense, 'moe': layer_step(s, e, k, f, name)}, s)
    rows.append({'dispatcher': name,
                 'cf': CF if dispatcher.needs_capacity else None,
                 'dense_ms': ms['dense'], 'moe_ms': ms['moe'],
                 'moe_over_dense': ms['moe'] / ms['dense']})
    print(rows[-1], flush=True)
  return {'E': e, 'K': k, 'F': f, 'dense_F': k * f, 'rows': rows}


def ragged_part(s: Sizes) -> dict:
  e, k, f = s.fine
  names = ('dropless_ragged', 'dropless', 'dropless_fused')
  ms = gpu_suite_parts.timed_ms({n: layer_step(s, e, k, f, n) for n in names},
                                s)
  out = {'E': e, 'K': k, 'F': f, **{f'{n}_ms': ms[n] for n in names}}
  for n in names[1:]:
    out[f'ragged_over_{n}'] = ms['dropless_ragged'] / ms[n]
  return out


PARTS = {'layer': layer_part, 'ragged': ragged_part,
         'mfu': gpu_suite_parts.mfu_part,
         'ragged_all_to_all': gpu_suite_parts.all_to_all_part}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cpu-smoke', action='store_true',
                      help='every part at tiny sizes (checks it runs)')
  parser.add_argument('--parts', default=','.join(PARTS),
                      help=f'comma-separated subset of {",".join(PARTS)}')
  parser.add_argument('--peak-flops', type=float, default=0.0,
                      help="one device's peak FLOP/s for the MFU; 0: "
                      'moe_jax/models/flops.py by device kind')
  parser.add_argument('--out', default=common.default_out('gpu_suite'))
  args = parser.parse_args(argv)
  parts = args.parts.split(',')
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    parser.error(f'--parts: unknown {unknown}; choose from {sorted(PARTS)}')
  sizes = SMOKE if args.cpu_smoke else GPU
  if not args.cpu_smoke and jax.default_backend() == 'cpu':
    print('note: no accelerator; these are the GPU sizes on a CPU (slow). '
          'Use --cpu-smoke to check that the suite runs.', flush=True)
  results = {}
  payload = {'mode': 'cpu-smoke' if args.cpu_smoke else 'full',
             'dtype': 'bfloat16', 'sizes': dataclasses.asdict(sizes),
             'parts': results}
  for name in parts:
    start = time.perf_counter()
    kwargs = {'peak_flops': args.peak_flops} if name == 'mfu' else {}
    results[name] = PARTS[name](sizes, **kwargs)
    results[name]['seconds'] = time.perf_counter() - start
    print(f'{name}: {results[name]["seconds"]:.1f} s', flush=True)
    # Written after every part, so a run cut by a time limit keeps its
    # finished parts ('complete' says whether every part ran).
    common.write_json(args.out, {**payload, 'complete': name == parts[-1]})
  layer = results.get('layer')
  if layer:
    common.print_table(layer['rows'], ['dispatcher', 'cf', 'dense_ms',
                                       'moe_ms', 'moe_over_dense'])
  mfu = results.get('mfu')
  if mfu:
    common.print_table(mfu['rows'], ['model', 'params_total', 'params_active',
                                     'step_ms', 'tokens_per_s', 'mfu'])
  for name in parts:
    if name not in ('layer', 'mfu'):
      print(name, results[name])


if __name__ == '__main__':
  main()
