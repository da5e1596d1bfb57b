"""The torch side of benchmarks/hf_block.py: transformers' MixtralSparseMoeBlock
in its own process (no jax here), driven over stdin / stdout.

  python hf_block_worker.py WEIGHTS.npz OUT.npz THREADS IMPLS MODES CLOCK

WEIGHTS.npz holds x [B, L, D] and the block's tensors in transformers'
layout (gate [E, D], gate_up_proj [E, 2F, D], down_proj [E, D, F]) plus
meta [K]. The worker writes each experts implementation's output (and with
mode fwdbwd the gradient of mean(y²) by x) to OUT.npz, prints 'ready', then
answers each line 'IMPL MODE INNER' with the seconds of INNER back-to-back
calls, until 'quit'; CLOCK 'wall' (time.perf_counter) or 'cpu' (this
process's CPU time, time.process_time).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock


def build(weights: dict) -> tuple[MixtralSparseMoeBlock, MixtralConfig]:
  e, two_f, d = weights['gate_up_proj'].shape
  config = MixtralConfig(hidden_size=d, intermediate_size=two_f // 2,
                         num_local_experts=e,
                         num_experts_per_tok=int(weights['meta'][0]),
                         router_jitter_noise=0.0)
  block = MixtralSparseMoeBlock(config).eval()
  with torch.no_grad():
    block.gate.weight.copy_(torch.from_numpy(weights['gate']))
    block.experts.gate_up_proj.copy_(torch.from_numpy(weights['gate_up_proj']))
    block.experts.down_proj.copy_(torch.from_numpy(weights['down_proj']))
  return block, config


def call(block, x: torch.Tensor, mode: str):
  """One forward (inference, no graph) or forward + backward of mean(y²)."""
  if mode == 'fwd':
    with torch.inference_mode():
      return block(x), None
  block.zero_grad(set_to_none=True)
  x = x.detach().requires_grad_(True)
  y = block(x)
  torch.mean(torch.square(y)).backward()
  return y, x.grad


def main(argv):
  weights_path, out_path, threads, impls, modes, clock = argv
  clock = time.perf_counter if clock == 'wall' else time.process_time
  torch.set_num_threads(int(threads))
  with np.load(weights_path) as f:
    weights = dict(f)
  block, config = build(weights)
  x = torch.from_numpy(weights['x'])
  results = {}
  for impl in impls.split(','):
    # What transformers' from_pretrained sets (grouped_mm where it can run).
    config._experts_implementation = impl  # pylint: disable=protected-access
    for mode in modes.split(','):
      y, dx = call(block, x, mode)
      results[f'{impl}/{mode}/y'] = y.detach().numpy()
      if dx is not None:
        results[f'{impl}/{mode}/dx'] = dx.numpy()
  np.savez(out_path, **results)
  print('ready', flush=True)
  for line in sys.stdin:
    if line.strip() == 'quit':
      break
    impl, mode, inner = line.split()
    config._experts_implementation = impl  # pylint: disable=protected-access
    start = clock()
    for _ in range(int(inner)):
      call(block, x, mode)
    print(clock() - start, flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
