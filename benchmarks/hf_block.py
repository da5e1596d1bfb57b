"""Our SwiGLU top-2 dropless layer against transformers' MixtralSparseMoeBlock.

  python benchmarks/hf_block.py [--threads=1] [--repeats=7] [--out=...]
  python benchmarks/hf_block.py --smoke     # tiny shapes: checks it runs

Both compute the same function: the weights are drawn in transformers'
layout and copied into ours by the converter's own mapping
(moe_jax/convert/hf_tensors.py), and the outputs (and, for forward +
backward, the gradients by x) must agree to TOL of their largest value
before anything is timed. Ours is moe_apply with router 'topk' (Mixtral's
renormalised gates), SwiGLU experts and dispatcher 'dropless', jitted.
transformers' block runs in a worker process (benchmarks/hf_block_worker.py)
under an interpreter that has torch: --torch-python, else this one when it
imports torch; with none the benchmark says so and exits 0.

Threads: both processes are pinned to the same --threads CPUs
(sched_setaffinity, inherited by the worker); torch uses that many threads,
and XLA:CPU at --threads=1 runs with --xla_cpu_multi_thread_eigen=false
(otherwise its default pool on the pinned CPUs). Timing: in each of
--repeats rounds, ours and then each HF experts implementation run --inner
calls back to back; the ratio is per round, ours over HF, and the median
over rounds is reported. 'eager' is the block's loop over experts (what a
block built from a config runs); 'grouped_mm' is what from_pretrained
picks where torch can run it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks import common  # pylint: disable=g-import-not-at-top

SHAPES = {'B': 4, 'L': 512, 'D': 512, 'F': 1024, 'E': 8, 'K': 2}
SMOKE = {'B': 2, 'L': 16, 'D': 16, 'F': 32, 'E': 4, 'K': 2}
TOL = 1e-5  # Largest |ours - HF| over the largest |HF|.
WORKER = REPO / 'benchmarks' / 'hf_block_worker.py'
# 'cpu': each process's CPU seconds (all its threads), which a busy machine
# inflates far less than wall time; indicative only, for such a machine.
CLOCKS = {'wall': time.perf_counter, 'cpu': time.process_time}


def torch_python(given: str | None) -> str | None:
  if given:
    return given
  return sys.executable if importlib.util.find_spec('torch') else None


def hf_weights(s: dict, seed: int = 0) -> dict[str, np.ndarray]:
  """x and the block's tensors in transformers' layout, fan-in scaled."""
  rng = np.random.default_rng(seed)
  b, l, d, f, e, k = (s[n] for n in 'BLDFEK')
  normal = lambda shape, fan_in: (rng.normal(size=shape) / np.sqrt(fan_in)
                                  ).astype(np.float32)
  return {'x': normal((b, l, d), 1), 'gate': normal((e, d), d),
          'gate_up_proj': normal((e, 2 * f, d), d),
          'down_proj': normal((e, d, f), f), 'meta': np.array([k])}


def our_params(w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Our layer's parameters, through the converter's tensor mapping."""
  from moe_jax.convert.hf_tensors import Link, to_ours  # pylint: disable=g-import-not-at-top
  e, two_f, d = w['gate_up_proj'].shape
  f = two_f // 2
  ours = {'router_kernel': ('gate', 'linear1', (d, e)),
          'wi_gate': ('gate_up_proj', 'fused_gate', (e, d, f)),
          'wi': ('gate_up_proj', 'fused_up', (e, d, f)),
          'wo': ('down_proj', 'fused_down', (e, f, d))}
  return {name: to_ours(Link((hf,), (name,), kind), [w[hf]], shape)
          for name, (hf, kind, shape) in ours.items()}


def our_calls(w: dict[str, np.ndarray], modes: list[str]):
  """{mode: (a blocking call, its output y, its dx or None)}."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from moe_jax.core import MoEConfig, moe_apply  # pylint: disable=g-import-not-at-top
  e, two_f, _ = w['gate_up_proj'].shape
  cfg = MoEConfig(num_experts=e, top_k=int(w['meta'][0]), router='topk',
                  expert_type='swiglu', d_ff=two_f // 2,
                  dispatcher='dropless')
  params = jax.tree.map(jnp.asarray, our_params(w))
  x = jnp.asarray(w['x'])

  def forward(p, x):
    return moe_apply(p, x, cfg, train=False)[0]

  def mean_square(p, x):
    y = moe_apply(p, x, cfg, train=True)[0]
    return jnp.mean(jnp.square(y)), y

  steps = {'fwd': jax.jit(forward),
           # Gradients by every weight and x, as torch's backward computes.
           'fwdbwd': jax.jit(jax.grad(mean_square, argnums=(0, 1),
                                      has_aux=True))}
  out = {}
  for mode in modes:
    step = steps[mode]
    result = step(params, x)
    y, dx = (result, None) if mode == 'fwd' else (result[1], result[0][1])
    out[mode] = (lambda s=step: jax.block_until_ready(s(params, x)),
                 np.asarray(y), None if dx is None else np.asarray(dx))
  return out


class Worker:
  """transformers' block in a torch process, timed on request."""

  def __init__(self, python, weights_path, out_path, args):
    self.proc = subprocess.Popen(
        [python, str(WORKER), str(weights_path), str(out_path),
         str(args.threads), args.hf_impls, args.modes, args.clock],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = self.proc.stdout.readline().strip()
    if line != 'ready':
      self.proc.kill()
      raise SystemExit(f'hf_block: the torch worker did not start ({line!r});'
                       ' run benchmarks/hf_block_worker.py by hand to see why')

  def seconds(self, impl: str, mode: str, inner: int) -> float:
    self.proc.stdin.write(f'{impl} {mode} {inner}\n')
    self.proc.stdin.flush()
    return float(self.proc.stdout.readline())

  def close(self):
    self.proc.stdin.write('quit\n')
    self.proc.stdin.close()
    self.proc.wait(timeout=60)


def agreement(ours: np.ndarray, theirs: np.ndarray, what: str) -> float:
  err = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))
  if not err <= TOL:
    raise SystemExit(f'hf_block: {what} differs from transformers by {err:.3g}'
                     f' of its largest value (> {TOL}); nothing was timed')
  return err


def pin(threads: int) -> list[int]:
  """This process (and the worker it starts) on the first `threads` CPUs;
  XLA single-threaded at 1. Before jax starts."""
  cpus = sorted(os.sched_getaffinity(0))[:threads]
  os.sched_setaffinity(0, cpus)
  if threads == 1:
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               ' --xla_cpu_multi_thread_eigen=false').strip()
  return cpus


def measure(args, python: str, shapes: dict) -> dict:
  w = hf_weights(shapes)
  modes, impls = args.modes.split(','), args.hf_impls.split(',')
  with tempfile.TemporaryDirectory() as tmp:
    np.savez(pathlib.Path(tmp) / 'w.npz', **w)
    worker = Worker(python, pathlib.Path(tmp) / 'w.npz',
                    pathlib.Path(tmp) / 'hf.npz', args)
    try:
      with np.load(pathlib.Path(tmp) / 'hf.npz') as f:
        hf = dict(f)
      ours = our_calls(w, modes)
      rows = []
      for mode in modes:
        run, y, dx = ours[mode]
        errors = {}
        for impl in impls:
          errors[f'{impl}_y'] = agreement(y, hf[f'{impl}/{mode}/y'], f'{mode} y')
          if dx is not None:
            errors[f'{impl}_dx'] = agreement(dx, hf[f'{impl}/{mode}/dx'],
                                             f'{mode} dx')
        rows += time_mode(args, worker, run, mode, impls, errors)
    finally:
      worker.close()
  return {'rows': rows}


def time_mode(args, worker, run, mode, impls, errors) -> list[dict]:
  for _ in range(2):  # Warm-up: compiled, caches and allocators settled.
    run()
    for impl in impls:
      worker.seconds(impl, mode, 1)
  clock = CLOCKS[args.clock]
  ours, theirs = [], {impl: [] for impl in impls}
  for _ in range(args.repeats):
    start = clock()
    for _ in range(args.inner):
      run()
    ours.append((clock() - start) / args.inner)
    for impl in impls:
      theirs[impl].append(worker.seconds(impl, mode, args.inner) / args.inner)
  rows = []
  for impl in impls:
    ratios = [o / t for o, t in zip(ours, theirs[impl])]
    rows.append({'mode': mode, 'hf_impl': impl,
                 'ours_ms': 1e3 * statistics.median(ours),
                 'hf_ms': 1e3 * statistics.median(theirs[impl]),
                 'median_ratio': statistics.median(ratios),
                 'min_ratio': min(ratios), 'max_ratio': max(ratios),
                 'max_rel_diff_y': errors[f'{impl}_y'],
                 'max_rel_diff_dx': errors.get(f'{impl}_dx')})
    print(rows[-1], flush=True)
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--smoke', action='store_true',
                      help=f'tiny shapes {SMOKE}, one round')
  parser.add_argument('--threads', type=int, default=1)
  parser.add_argument('--repeats', type=int, default=7)
  parser.add_argument('--inner', type=int, default=3)
  parser.add_argument('--modes', default='fwd,fwdbwd')
  parser.add_argument('--clock', choices=sorted(CLOCKS), default='wall',
                      help='wall time, or CPU time (for a busy machine)')
  parser.add_argument('--hf-impls', default='eager,grouped_mm')
  parser.add_argument('--torch-python', default=None,
                      help='an interpreter with torch and transformers '
                      '(default: this one, if it has torch)')
  parser.add_argument('--out', default=common.default_out('hf_block'))
  args = parser.parse_args(argv)
  bad_modes = set(args.modes.split(',')) - {'fwd', 'fwdbwd'}
  if bad_modes:
    parser.error(f'--modes: unknown {sorted(bad_modes)}; use fwd, fwdbwd')
  if args.threads < 1 or args.threads > len(os.sched_getaffinity(0)):
    parser.error(f'--threads={args.threads}: use 1 to '
                 f'{len(os.sched_getaffinity(0))} (the CPUs this process has)')
  shapes = SMOKE if args.smoke else SHAPES
  if args.smoke:
    args.repeats, args.inner = 1, 1
  python = torch_python(args.torch_python)
  if python is None:
    print('hf_block: skipped, torch is not importable here; pass '
          '--torch-python=<an interpreter with torch and transformers>')
    return
  cpus = pin(args.threads)
  result = measure(args, python, shapes)
  common.print_table(result['rows'], ['mode', 'hf_impl', 'ours_ms', 'hf_ms',
                                      'median_ratio', 'min_ratio',
                                      'max_ratio', 'max_rel_diff_y'])
  common.write_json(args.out, {
      'shapes': shapes, 'threads': args.threads, 'cpus': cpus,
      'clock': args.clock,
      'xla_flags': os.environ.get('XLA_FLAGS', ''), 'torch_python': python,
      'repeats': args.repeats, 'inner': args.inner, **result})


if __name__ == '__main__':
  main()
