"""XLA:CPU's matmuls against torch's, one thread, the same SwiGLU expert.

  python benchmarks/matmul_kernels.py [--clock=cpu]   # needs torch and jax

silu(x·Wg) ⊙ (x·Wi) · Wo over T = 4096 rows (hf_block.py's B·L·K) at
D = 512, F = 1024: jitted in XLA, and in torch both plainly and in
transformers' Mixtral layout (F.linear on the fused [2F, D] gate_up_proj,
then chunk). One process, pinned to one CPU, single-threaded, interleaved
rounds. If our layer runs near 'xla' (benchmarks/hf_block_parts.py's
'matmuls' row), this ratio is what separates it from transformers' block.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common, hf_block  # pylint: disable=g-import-not-at-top

T, D, F = 4096, 512, 1024


def calls():
  """{name: a call computing the expert's output}."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1)
  rng = np.random.default_rng(0)
  x, wg, wi = (rng.normal(size=s).astype(np.float32)
               for s in ((T, D), (D, F), (D, F)))
  wo = rng.normal(size=(F, D)).astype(np.float32)
  mlp = jax.jit(lambda x, wg, wi, wo: (jax.nn.silu(x @ wg) * (x @ wi)) @ wo)
  args = [jnp.asarray(a) for a in (x, wg, wi, wo)]
  tx, tg, ti, to = map(torch.from_numpy, (x, wg, wi, wo))
  gate_up = torch.from_numpy(np.concatenate([wg, wi], 1).T.copy())
  down = torch.from_numpy(wo.T.copy())
  linear, silu = torch.nn.functional.linear, torch.nn.functional.silu

  def torch_plain():
    with torch.inference_mode():
      return (silu(tx @ tg) * (tx @ ti)) @ to

  def torch_mixtral_layout():
    with torch.inference_mode():
      g, u = linear(tx, gate_up).chunk(2, dim=-1)
      return linear(silu(g) * u, down)

  return {'xla': lambda: mlp(*args).block_until_ready(),
          'torch_plain': torch_plain,
          'torch_mixtral_layout': torch_mixtral_layout}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--clock', choices=sorted(hf_block.CLOCKS),
                      default='wall')
  parser.add_argument('--repeats', type=int, default=7)
  parser.add_argument('--out', default=common.default_out('matmul_kernels'))
  args = parser.parse_args(argv)
  hf_block.pin(1)
  fns = calls()
  clock = hf_block.CLOCKS[args.clock]
  samples = {n: [] for n in fns}
  for fn in fns.values():
    fn()
  for _ in range(args.repeats):
    for name, fn in fns.items():
      start = clock()
      fn()
      samples[name].append(clock() - start)
  xla = statistics.median(samples['xla'])
  rows = [{'kernel': n, 'ms': 1e3 * statistics.median(s),
           'GFLOP_per_s': 2 * 3 * T * D * F / statistics.median(s) / 1e9,
           'xla_over_this': xla / statistics.median(s)}
          for n, s in samples.items()]
  common.print_table(rows, ['kernel', 'ms', 'GFLOP_per_s', 'xla_over_this'])
  common.write_json(args.out, {'T': T, 'D': D, 'F': F, 'clock': args.clock,
                               'rows': rows})


if __name__ == '__main__':
  main()
