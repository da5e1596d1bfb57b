"""moe.ep_overflow='retry': a train step whose bounded expert-parallel
buffers overflowed is rerun with the worst-case buffers, so nothing is ever
dropped.

With moe.ep_buffer_factor set, the dropless all-to-all buffers hold f times
the balanced load (moe_jax/parallel/dropless_ep.py) and every MoE layer
counts the choices that did not fit ('moe_<i>/ep_overflow_rows'). Under
'retry' the run keeps two compiled train steps:

  bounded   the step as configured. It commits its update only if no layer
            overflowed (keep_state_on_overflow: a select over the state, in
            the jitted step, where the donated old state still exists);
  worst     the same step on a graphdef whose layers have the factor unset,
            today's worst-case buffers, compiled the first time it runs.

and the host reads each bounded step's counters: when any is > 0 it reruns
the same batch on the (unchanged) state with `worst`, whose result is the
step the unbounded run would have taken, bit for bit.

Why on the host, and not inside jit as lax.cond(overflowed, worst, bounded):
  - both bodies would be one program, and under jax.grad JAX's cond returns
    the residuals of every branch from each (zeros for the untaken ones), so
    the worst case's activations are allocated on every step: the memory
    the bound exists to save. (A small check on this CPU, grad of a loss
    with a 1x and an 8x body: 2.0 MiB of temporaries for the 1x body alone,
    20 MiB for the 8x alone, 74.5 MiB for the cond of both.)
  - the overflow is known only inside each layer, after its counts'
    all-to-all; every layer would need its own cond, every device taking
    the same branch.
The price on the host: it waits for each step's counters before it
dispatches the next (no step runs ahead), and a step that overflows costs
the bounded attempt plus the worst-case step, whose peak memory is the
worst case's. 'retry' saves traffic and time on the steps that fit, not
peak memory; 'drop' saves both and changes the math.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moe_jax.parallel import mesh as mesh_lib
from moe_jax.parallel.expert_parallel import EXPERT_AXIS, OVERFLOW
from moe_jax.train import setup

RETRIED = 'ep_retried'  # Metric: 1 when the step was rerun, else 0.


def overflow_counters(metrics: dict[str, Any]) -> dict[str, Any]:
  """The per-layer 'moe_<i>/ep_overflow_rows' entries of a step's metrics."""
  return {k: v for k, v in metrics.items()
          if k.rsplit('/', 1)[-1] == OVERFLOW}


def keep_state_on_overflow(train_step: Callable) -> Callable:
  """train_step, returning its input state instead of the new one when a
  layer overflowed (so the host can rerun it on the same state)."""

  def step(state, batch, *args, **kwargs):
    new_state, metrics = train_step(state, batch, *args, **kwargs)
    counts = list(overflow_counters(metrics).values())
    fits = sum(counts) == 0 if counts else True
    kept = jax.tree.map(lambda new, old: jnp.where(fits, new, old),
                        new_state, state)
    return kept, metrics

  return step


def exact_graphdef(mcfg, config, graphdef):
  """The graphdef whose MoE layers exchange worst-case buffers: `graphdef`
  itself unless moe.ep_buffer_factor bounds them. The evaluation runs on it
  too: its loss must not depend on a buffer size."""
  if not mcfg.moe.ep_buffer_factor:
    return graphdef
  worst = dataclasses.replace(
      mcfg, moe=dataclasses.replace(mcfg.moe, ep_buffer_factor=None))
  return nnx.graphdef(nnx.eval_shape(setup.new_model(worst, config)))


class RetryingStep:
  """(state, batch) -> (state, metrics): the bounded step, rerun with the
  worst-case one when it overflowed.

  The metrics are those of the step that counted, the worst-case one after
  a retry, with the bounded attempt's overflow counters and RETRIED.
  """

  def __init__(self, bounded: Callable, worst: Callable):
    self._bounded, self._worst = bounded, worst

  def __call__(self, state, batch):
    state, metrics = self._bounded(state, batch)
    # Waits for the step: the next one's input depends on the answer.
    counters = jax.device_get(overflow_counters(metrics))
    retried = any(int(v) for v in counters.values())
    if retried:
      state, metrics = self._worst(state, batch)
      metrics = {**metrics, **counters}
    return state, {**metrics, RETRIED: np.int32(retried)}


def step_fn(trains, graphdef, exact, tx, shardings, batch_sh, mesh, moe):
  """The run's (state, batch) -> (state, metrics).

  trains: the run's trainable.FullModel or LoraRun; exact: exact_graphdef;
  moe: the MoEConfig. A RetryingStep under 'retry' with bounded buffers and
  an expert axis to exchange over; else the plain jitted step.
  """
  if (not moe.ep_buffer_factor or moe.ep_overflow != 'retry' or
      mesh_lib.axis_size(mesh, EXPERT_AXIS) == 1):
    return trains.step_fn(graphdef, tx, shardings, batch_sh, mesh)
  return RetryingStep(
      trains.step_fn(graphdef, tx, shardings, batch_sh, mesh,
                     keep_on_overflow=True),
      trains.step_fn(exact, tx, shardings, batch_sh, mesh))
