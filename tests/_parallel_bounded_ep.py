"""Bounded-buffer dropless expert parallelism on 8 CPU devices (mesh 2x4x1);
test_parallel_bounded_ep.py checks what this writes.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python tests/_parallel_bounded_ep.py OUT_DIR

Under OUT_DIR:

  layer_<case>.npz  the top-2 dropless layer (tests/_parallel_moe.py's
                    inputs): y, loss, aux and gradients, for
                    moe.ep_buffer_factor None ('today') and 2.0 (slots of
                    M/2 rows, which this routing fits);
  layer_skewed.npz  'overflow': the layer's count with the zero router
                    (every choice to experts 0 and 1, both on one device)
                    at factor 1.0.
  plan.npz          a hand-built skewed plan through run_experts at factor
                    1.0 ('y', 'overflow') and, on one device, the same plan
                    with the rows the test expects dropped marked DROPPED
                    ('y_ref'), for the dropless dispatcher.
  steps_<run>.npz   STEPS train steps of the tiny dropless model from one
                    initial state: 'today' (the model of a config without
                    the bound) and 'retry' (factor 0.5, which overflows
                    every step; built as the trainer builds it,
                    ep_retry.step_fn): final params, each step's loss,
                    per-layer overflow and 'ep_retried'.
  run/metrics.jsonl train_and_evaluate of the 'retry' run: the log.
"""

import contextlib
import io
import pathlib
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Run as a script, the checkout is not on the path the way pytest puts it.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# pylint: disable=g-import-not-at-top,wrong-import-position
from _parallel_moe import _COMMON, _flat, _inputs, _loss_and_grads, place
from _parallel_train import flat, tiny_config
import testlib
from testlib import moe_params, require_devices
from moe_jax.core.config import MoEConfig
from moe_jax.core.dispatch import DISPATCHERS, run_local
from moe_jax.core.experts import gelu_mlp
from moe_jax.core.plan import DROPPED, RoutingPlan
from moe_jax.parallel import mesh as mesh_lib
from moe_jax.parallel import placement
from moe_jax.parallel.expert_parallel import (OVERFLOW, parallel_moe_apply,
                                              run_experts)
from moe_jax.train import ep_retry, setup, trainable, trainer

NUM_DEVICES = 8
MESH = (2, 4, 1)
STEPS = 2
LAYER = {'today': None, 'factor2': 2.0}
G, S, D, F, E = 8, 16, 8, 16, 8  # One group per device.


def _layer_config(factor):
  # The layer drops what does not fit under either ep_overflow; 'retry'
  # acts in the train step (train_steps below).
  return MoEConfig(router='topk', top_k=2, dispatcher='dropless',
                   ep_buffer_factor=factor, **_COMMON)


def layer_cases(mesh, out: pathlib.Path) -> None:
  for name, factor in LAYER.items():
    config = _layer_config(factor)
    placed, xs, rs = place(mesh, *_inputs(config))
    with jax.set_mesh(mesh):
      result = _loss_and_grads(config)(placed, xs, rs)
    np.savez(out / f'layer_{name}.npz', **_flat(result))
  # The zero router at f = 1: its count only (the forward pass).
  config = _layer_config(1.0)
  placed, xs, _ = place(mesh, *_inputs(config, zero_router=True))
  with jax.set_mesh(mesh):
    aux = jax.jit(lambda p, x: parallel_moe_apply(p, x, config, train=True)[1])(
        placed, xs)
  np.savez(out / 'layer_skewed.npz', overflow=aux[OVERFLOW])


def skewed_plan() -> tuple[RoutingPlan, np.ndarray]:
  """Choice 0 of every token to expert 0, choice 1 of token s to expert
  2·(s % 4) + 1: experts 0 and 1 live on expert-axis device 0, which so
  gets 16 + 4 of each group's 32 choices, the other three 4 each."""
  expert = np.zeros((G, S, 2), np.int32)
  expert[:, :, 1] = 2 * (np.arange(S) % 4) + 1
  gates = np.random.default_rng(1).uniform(0.2, 1.0, (G, S, 2))
  return (RoutingPlan(jnp.asarray(expert), jnp.asarray(gates, jnp.float32),
                      jnp.zeros((G, S, 2), jnp.int32), E, None), gates)


def plan_case(mesh, out: pathlib.Path) -> None:
  plan, gates = skewed_plan()
  params = {k: v for k, v in moe_params(0, D, F, E).items() if k != 'router_kernel'}
  x = jnp.asarray(np.random.default_rng(2).normal(size=(G, S, D)), jnp.float32)
  dropless = DISPATCHERS['dropless']

  def bounded(x, plan, params):
    counted = {}
    y = run_experts(x, plan, params, dropless, gelu_mlp, buffer_factor=1.0,
                    metrics=counted)
    return y, counted[OVERFLOW]

  with jax.set_mesh(mesh):
    y, overflow = jax.jit(bounded)(x, plan, params)
  # What the test expects dropped, marked by hand (see its docstring).
  s = np.arange(S)[None, :]
  dropped = np.stack([np.broadcast_to(s >= 8, (G, S)),
                      np.broadcast_to(s % 4 == 0, (G, S))], axis=-1)
  ref_plan = RoutingPlan(plan.expert_index,
                         jnp.asarray(np.where(dropped, 0, gates), jnp.float32),
                         jnp.asarray(np.where(dropped, DROPPED, 0), jnp.int32),
                         E, None)
  y_ref = jax.jit(lambda x, p, w: run_local(x, p, w, dropless, gelu_mlp))(
      x, ref_plan, params)
  np.savez(out / 'plan.npz', y=y, overflow=overflow, y_ref=y_ref)


def retry_config(factor: float):
  config = tiny_config(MESH)
  with config.unlocked():
    config.moe.dispatcher = 'dropless'
    config.moe.ep_buffer_factor = factor
    config.train.num_steps = STEPS
    config.train.eval_every = config.train.checkpoint_every = STEPS
    config.train.eval_batches = config.train.final_eval_batches = 1
  return config


def train_steps(mesh, out: pathlib.Path) -> None:
  """STEPS steps of each run from one initial state and the same batches."""
  config = retry_config(0.5)
  mcfg = setup.model_config(config)
  batches = setup.load_data(config).batches
  graphdef, initial, shardings, tx = setup.init_state(mcfg, config, mesh)
  trains = trainable.for_config(config, mcfg, mesh, read_init_from=False)
  batch_sh = placement.batch_shardings(mesh, batches.batch_at(0))
  # Today's model, built from its own config (factor 0), not by ep_retry.
  today = nnx.graphdef(nnx.eval_shape(setup.new_model(
      setup.model_config(retry_config(0.0)), config)))
  runs = {'today': trains.step_fn(today, tx, shardings, batch_sh, mesh),
          'retry': ep_retry.step_fn(
              trains, graphdef, ep_retry.exact_graphdef(mcfg, config, graphdef),
              tx, shardings, batch_sh, mesh, mcfg.moe)}
  for name, step_fn in runs.items():
    state = jax.tree.map(jnp.copy, initial)  # Each step donates its input.
    logged = []
    with jax.set_mesh(mesh):
      for step in range(STEPS):
        batch = placement.shard_batch(batches.batch_at(step), batch_sh)
        state, metrics = step_fn(state, batch)
        logged.append(jax.device_get(metrics))
    record = flat(state.params, 'final/')
    for key in ('loss', 'moe_1/' + OVERFLOW, ep_retry.RETRIED):
      if key in logged[0]:
        record[key] = np.stack([np.asarray(m[key]) for m in logged])
    np.savez(out / f'steps_{name}.npz', **record)


def main(out_dir: str) -> None:
  require_devices(NUM_DEVICES)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  # The trainer's steps come back from here instead of compiling again.
  cache = testlib.private_compilation_cache(out)
  mesh = mesh_lib.make_mesh(MESH)
  layer_cases(mesh, out)
  plan_case(mesh, out)
  train_steps(mesh, out)
  with contextlib.redirect_stdout(io.StringIO()):
    trainer.train_and_evaluate(retry_config(0.5), str(out / 'run'))
  shutil.rmtree(cache)


if __name__ == '__main__':
  main(sys.argv[1])
