"""Gradient accumulation: how far N micro-batches are from one batch.

  python benchmarks/accumulation.py [--steps=4] [--mesh=2,4,1] \
      [--time=ROUNDS] [--out=runs/benchmarks/accumulation.json]

One train step of each router's tiny config (both blocks MoE, batch 32 of
random bytes) at train.grad_accum_steps = 1 and = N, same parameters and
batch, with SGD at learning rate 1 so that each parameter's move is its
gradient. Prints the largest absolute difference of the loss, of the
per-layer balance and z-losses, of the gradient and of the router state
(the sign rule's bias), and the gradient's scale; floor_grad is the
rounding floor, how far the N = 1 gradient moves when the batch's rows are
reversed (the same sums in another order). 'lora' trains rank-2
adapters beside a frozen base; the last row is switch with
moe.balance_loss_scope='micro_batch', the per-micro-batch balance that
N = 1 is not. --mesh runs the N-step on that (data, expert, model) mesh,
LoRA's on one device (set
XLA_FLAGS=--xla_force_host_platform_device_count=<devices> on CPU).
--time also times the full-size switch_top1 step (batch 16 × 128) at N = 1
and at N with its balance loss weighted (the counting forward pass runs)
and at weight 0 (it does not). tests/_parallel_accumulate.py runs the same
steps as the table.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import sys

import jax
import numpy as np
import optax

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common
from moe_jax.inspect import load_config_file
from moe_jax.parallel import mesh as mesh_lib
from moe_jax.parallel import placement
from moe_jax.train import init_from, setup
from moe_jax.train.lora import adapters as lora
from moe_jax.train.step import train_step

BATCH = 32  # Splits into 4 micro-batches on each of 8 data shards.
# A balance loss weighted 0.1, so its global pooling shows in the gradient.
BALANCE = {'moe.load_balance_weight': 0.1}
# Name: (config file, overrides); 'micro_batch' is switch's per-micro-batch
# balance scope.
ROUTERS = {
    'switch': ('configs/switch_top1.py', BALANCE),
    'topk': ('configs/switch_top1.py',
             {'moe.router': 'topk', 'moe.top_k': 2, **BALANCE}),
    'sigmoid_bias': ('configs/sigmoid_loss_free.py', BALANCE),
    # c = E: every expert takes every token of its window. Expert choice
    # compares probabilities across tokens, and at c = 2 a near-tie that
    # another batch shape rounds the other way flips a choice (on the
    # (2, 4, 1) mesh, 4 of 48 micro-batch layers over 6 batches): rounding,
    # not accumulation, which splits no routing group.
    'expert_choice': ('configs/expert_choice.py',
                      {'moe.capacity_factor': 8.0}),
    # LoRA adapters beside a frozen base: gradients through LoRA's merge.
    'lora': ('configs/switch_top1.py',
             {'lora.rank': 2, 'lora.targets': ('attention', 'experts'),
              **BALANCE}),
    'micro_batch': ('configs/switch_top1.py',
                    {'moe.balance_loss_scope': 'micro_batch', **BALANCE}),
}


def config_for(name: str, steps: int = 1):
  """The tiny config of ROUTERS[name] at train.grad_accum_steps=steps."""
  path, overrides = ROUTERS[name]
  config = load_config_file(f'{REPO / path}:tiny')
  config.lock()  # A mistyped override fails.
  config.update_from_flattened_dict({
      'batch_size': BATCH, 'model.moe_every': 1, 'moe.z_loss_weight': 1e-2,
      # Router scores spread wider than at init_scale 0.1, so that near-ties,
      # which rounding may break either way in a discrete choice, are rare.
      'moe.init_scale': 1.0,
      'train.grad_accum_steps': steps, **overrides})
  return config


def random_batch(config, seed: int = 0) -> dict[str, np.ndarray]:
  """Random bytes: no runs of one byte, whose tied router scores would let
  rounding pick between tokens (expert choice breaks ties by position)."""
  tokens = np.random.default_rng(seed).integers(
      0, 256, (config.batch_size, config.seq_len + 1), dtype=np.int32)
  return {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:]}


def stepper(config, mesh=None):
  """(initial state, run): run(batch) -> (new state, metrics) is one jitted
  SGD(1) train step from that state.

  With lora.rank > 0 the step trains adapters (lora.targets) beside the
  frozen initial parameters. mesh: run the step under this mesh,
  parameters and batch placed as the trainer places them; None: on one
  device, without a mesh.
  """
  mcfg = setup.model_config(config)
  place = mesh or mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  graphdef, state, shardings, _ = setup.init_state(mcfg, config, place)
  frozen, scale = None, 0.0
  if config.lora.rank:  # One device only: adapters are made on device 0.
    frozen, scale = state.params, config.lora.alpha / config.lora.rank
    shapes = {k: v.shape for k, v in init_from.flatten(frozen).items()}
    state = state.replace(params=lora.init_adapters(
        jax.random.PRNGKey(1), shapes, tuple(config.lora.targets),
        config.lora.rank))
  tx = optax.sgd(1.0)
  state = state.replace(opt_state=tx.init(state.params))
  step = lambda s, b: train_step(
      s, b, frozen, graphdef=graphdef, tx=tx, lora_scale=scale,
      grad_accum_steps=config.train.grad_accum_steps)
  if mesh is None:
    return state, functools.partial(jax.jit(step), state)
  batch_sh = placement.batch_shardings(mesh, random_batch(config))
  # SGD keeps no state: a prefix sharding covers its empty tree.
  shardings = shardings.replace(opt_state=placement.replicated(mesh))
  jitted = jax.jit(step, in_shardings=(shardings, batch_sh))

  def run(batch):
    with jax.set_mesh(mesh):
      return jitted(state, placement.shard_batch(batch, batch_sh))

  return state, run


def one_step(config, mesh=None, batches=None) -> list[dict[str, np.ndarray]]:
  """stepper's step from the initial state on each batch (default
  [random_batch(config)]): {'grad/<param>' (with LoRA, the adapters'),
  'router/<state>', the step's metrics} per batch."""
  state, run = stepper(config, mesh)
  before = _flat(state.params)
  results = []
  for batch in batches or [random_batch(config)]:
    new, metrics = run(batch)
    after = _flat(new.params)
    out = {f'grad/{k}': before[k] - after[k] for k in before}
    out.update({f'router/{k}': v for k, v in
                _flat(new.router_states()).items()})
    out.update({k: np.asarray(v) for k, v in jax.device_get(metrics).items()})
    results.append(out)
  return results


def step_times(steps: int, rounds: int) -> list[dict]:
  """ms per train step of the full-size switch config (batch 16 × 128):
  N = 1, and N = steps with the balance loss weighted (the counting pass
  runs) and at weight 0 (it does not), timed interleaved."""
  runs = {}
  for name, n, weight in (('N=1', 1, 0.1), (f'N={steps}', steps, 0.1),
                          (f'N={steps}, α=0', steps, 0.0)):
    config = load_config_file(f'{REPO}/configs/switch_top1.py')
    config.moe.load_balance_weight = weight
    config.train.grad_accum_steps = n
    _, run = stepper(config)
    batch = random_batch(config)
    runs[name] = lambda run=run, batch=batch: jax.block_until_ready(run(batch))
  seconds = common.time_interleaved(runs, rounds=rounds)
  return [{'step': name, 'step_ms': 1e3 * t,
           'over_N=1': t / seconds['N=1']} for name, t in seconds.items()]


def _flat(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(p, simple=True, separator='/'):
          np.asarray(jax.device_get(v))
          for p, v in jax.tree.leaves_with_path(tree)}


def differences(one: dict, many: dict) -> dict[str, float]:
  """Largest |N-step − 1-step| by kind, and the gradient's scale."""
  def worst(keys):
    return max((float(np.max(np.abs(many[k] - one[k]))) for k in keys),
               default=0.0)
  keys = list(one)
  return {
      'loss': worst(['loss']),
      'balance_loss': worst([k for k in keys
                             if k.endswith('/load_balance_loss')]),
      'z_loss': worst([k for k in keys if k.endswith('/z_loss')]),
      'grad': worst([k for k in keys if k.startswith('grad/')]),
      'router_state': worst([k for k in keys if k.startswith('router/')]),
      'grad_scale': max(float(np.max(np.abs(one[k]))) for k in keys
                        if k.startswith('grad/')),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=4)
  parser.add_argument('--mesh', default='',
                      help='(data, expert, model) for the N-step, e.g. 2,4,1')
  parser.add_argument('--time', type=int, default=0, metavar='ROUNDS',
                      help='also time the full-size switch step, N=1 '
                      'against N=steps with and without the counting pass')
  parser.add_argument('--out', default=common.default_out('accumulation'))
  args = parser.parse_args()
  mesh = (mesh_lib.make_mesh(tuple(int(s) for s in args.mesh.split(',')))
          if args.mesh else None)
  rows = []
  for name in ROUTERS:
    batch = random_batch(config_for(name))
    # The noise floor: the same N = 1 step on the batch's rows reversed, the
    # same sums in another order.
    reversed_rows = {k: v[::-1] for k, v in batch.items()}
    one, floor = one_step(config_for(name, 1), batches=[batch, reversed_rows])
    [many] = one_step(config_for(name, args.steps),
                      None if name == 'lora' else mesh)
    rows.append({'router': name, **differences(one, many),
                 'floor_grad': differences(one, floor)['grad']})
  common.print_table(rows, ['router', 'loss', 'balance_loss', 'z_loss',
                            'grad', 'router_state', 'grad_scale',
                            'floor_grad'])
  times = step_times(args.steps, args.time) if args.time else []
  if times:
    common.print_table(times, ['step', 'step_ms', 'over_N=1'])
  common.write_json(args.out, {'steps': args.steps, 'mesh': args.mesh or None,
                               'batch_size': BATCH, 'rows': rows,
                               'step_times': times})


if __name__ == '__main__':
  main()
