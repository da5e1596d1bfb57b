"""MoE LM train step against its dense twin at equal active params/token.

  python benchmarks/train_step.py [--config=configs/switch_top1.py] \
      [--out=runs/benchmarks/train_step.json]

Times the jitted train step of the config and of the same config with
model.moe_every=0 (the dense twin), on the config's batch shape, and reports
step time, tokens/s, the MoE/dense step-time ratio (target on a 2-core
CPU: <= 1.25, i.e. MoE tokens/s >= 0.8 x dense), the first step's compile
time, and XLA's memory analysis of the compiled step.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import pathlib
import sys
import time
from typing import Callable

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # pylint: disable=g-import-not-at-top
from moe_jax.models.param_count import count_params
from moe_jax.train.step import train_step
from moe_jax.train.setup import init_state, load_data, make_mesh, model_config


def load_config(path: str):
  spec = importlib.util.spec_from_file_location('bench_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def build(config) -> tuple[dict, Callable[[], None]]:
  """(parameter counts, a function running one blocking train step)."""
  mcfg = model_config(config)
  mesh = make_mesh(config, mcfg)
  graphdef, state, _, tx = init_state(mcfg, config, mesh)
  total, active = count_params(state.params, mcfg.moe.top_k,
                               mcfg.moe.num_experts)
  batch = load_data(config).batches.batch_at(0)
  step = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx),
                 donate_argnums=0)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  holder = {'state': state}

  def run():
    holder['state'], metrics = compiled(holder['state'], batch)
    jax.block_until_ready(metrics['loss'])

  return {'params_total': total, 'params_active': active,
          'compile_s': compile_s,
          # XLA's own accounting of the step: live temporaries plus
          # arguments and outputs (state is donated, so they alias).
          'temp_MiB': memory.temp_size_in_bytes / 2**20,
          'args_MiB': memory.argument_size_in_bytes / 2**20}, run


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/switch_top1.py')
  parser.add_argument('--repeats', type=int, default=7)
  parser.add_argument(
      '--out', default=common.default_out('train_step'),
      help='JSON results (default: untracked runs/benchmarks/); '
      '--out=benchmarks/results/train_step.json updates the committed ones')
  args = parser.parse_args()

  moe_cfg = load_config(args.config)
  dense_cfg = load_config(args.config)
  dense_cfg.model.moe_every = 0
  counts, runs = {}, {}
  for name, cfg in (('dense twin', dense_cfg), (args.config, moe_cfg)):
    counts[name], runs[name] = build(cfg)
  seconds = common.time_interleaved(runs, rounds=args.repeats)
  tokens = moe_cfg.batch_size * moe_cfg.seq_len
  rows = [{'model': name, **counts[name], 'step_ms': 1e3 * seconds[name],
           'tokens_per_s': tokens / seconds[name]} for name in runs]
  ratio = rows[1]['step_ms'] / rows[0]['step_ms']
  common.print_table(rows, ['model', 'params_total', 'params_active',
                            'step_ms', 'tokens_per_s', 'compile_s',
                            'temp_MiB', 'args_MiB'])
  print(f'MoE / dense step time: {ratio:.3f} (target <= 1.25)')
  common.write_json(args.out, {'config': args.config, 'rows': rows,
                               'moe_over_dense': ratio})


if __name__ == '__main__':
  main()
