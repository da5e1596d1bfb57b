"""train_and_evaluate: the whole training run, from config to checkpoints.

Order matters for "bad input loses nothing": the config, the data and the
workdir's existing checkpoint are all validated before the first write.
"""

from __future__ import annotations

import functools
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from moe_jax.config import validate
from moe_jax.data import fingerprint
from moe_jax.models import flops as flops_lib
from moe_jax.models.config import ModelConfig
from moe_jax.models.param_count import count_params
from moe_jax.parallel import mesh as mesh_lib
from moe_jax.parallel import placement
from moe_jax.parallel import rules as rules_lib
from moe_jax.train import accumulate, ep_retry, optim, setup, trainable
from moe_jax.train.checkpoint import Checkpointer, has_checkpoint
from moe_jax.train.evaluate import evaluate, make_eval_fn
from moe_jax.train.interrupt import StopRequest, TrainingInterrupted
from moe_jax.train.metric_writer import MetricWriter, Progress, eval_line


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN or infinite loss, gradient or state."""


# The metrics that measure the machine, not the model: a resumed or repeated
# run reproduces every other field bit for bit.
TIMING_FIELDS = ('tokens_per_sec', 'cpu_seconds_per_step',
                 'flops_per_sec_per_device', 'mfu')

def _host(metrics: dict[str, Any]) -> dict[str, Any]:
  return {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Trains the configured model, evaluating and checkpointing as it goes.

  Resumes from the latest checkpoint in `workdir` when there is one.

  Returns:
    The final evaluation, over the whole validation split (unless
    train.final_eval_batches caps it): 'eval/loss', 'eval/bits_per_byte' or,
    for token data, 'eval/bits_per_token', and the routing metrics. The same
    numbers are the 'final_eval/...' record of metrics.jsonl; its 'eval/...'
    records are the curve, on train.eval_batches batches each time.

  Raises:
    UserInputError: bad config, data or workdir (nothing is written).
    NonFiniteLossError: the loss, gradients or state became NaN/inf (the
      last good checkpoint is kept and nothing after it is saved).
    TrainingInterrupted: SIGINT or SIGTERM arrived; the step in progress
      was finished and saved.
  """
  workdir = pathlib.Path(workdir)
  validate.check_train_config(config)
  validate.check_optim_config(config)
  validate.check_data_config(config)
  validate.check_workdir(workdir)
  trainable.check_config(config)
  mcfg = setup.model_config(config)
  data = setup.load_data(config)
  corpus, batches = data.corpus, data.batches
  data_id = fingerprint.data_fingerprint(corpus, config.data.tokenizer)
  unit = corpus.unit.rstrip('s')  # 'byte' or 'token', for the metric names.
  mesh = setup.make_mesh(config, mcfg)
  accumulate.check(config, mcfg, mesh_lib.batch_parallelism(mesh))
  # The one branch on what trains: the whole model, or LoRA's adapters. A
  # resumed run restores its own parameters, so train.init_from is read only
  # for a fresh run (before any write, so a bad source costs nothing) or for
  # LoRA, whose frozen base it is.
  trains = trainable.for_config(config, mcfg, mesh,
                                read_init_from=not has_checkpoint(workdir))
  ckpt = Checkpointer(workdir, config.train.keep_checkpoints)
  config_dict = config.to_dict()
  note = ckpt.check_compatible(config_dict, data_id)
  # One process writes metrics, prints and draws progress; all of them
  # checkpoint (each writes its own shards).
  main = jax.process_index() == 0
  say = functools.partial(print, flush=True) if main else lambda *_: None
  if note:
    say(note)

  graphdef, state, shardings, tx = setup.init_state(mcfg, config, mesh,
                                                    trains.trained)
  described, active = _describe(mcfg, trains.model_params(state),
                                 config.seq_len)
  flops_per_token = flops_lib.for_model(mcfg, active, config.seq_len)
  peak = flops_lib.peak_flops_per_device(config.train.peak_flops_per_device)
  say(f'model: {described};'
      f' data {corpus.name} ({len(corpus):,} {corpus.unit}); validation: '
      f'{data.held_out}, {len(data.final_batches)} batches at the end')
  summary = trains.summary(state)  # What LoRA trains, in a line.
  if summary:
    say(summary)
  if ckpt.latest_step() is not None:
    restored, restored_meta = ckpt.restore(
        placement.abstract_with_shardings(state, shardings))
    if restored is None:
      say('no checkpoint restores; starting from step 0')
    else:
      state = restored
      trains.resumed(restored_meta)
      say(f'resumed from step {int(state.step)} in {ckpt.directory}')
  state, started = trains.start(state)
  if started:
    say(started)

  batch_sh = placement.batch_shardings(mesh, batches.batch_at(0))
  # With bounded expert-parallel buffers: the worst-case twin, which 'retry'
  # reruns overflowing steps on and the evaluation always uses.
  exact = ep_retry.exact_graphdef(mcfg, config, graphdef)
  step_fn = ep_retry.step_fn(trains, graphdef, exact, tx, shardings, batch_sh,
                             mesh, mcfg.moe)
  eval_fn = make_eval_fn(exact, trains.eval_shardings(shardings), batch_sh,
                         mesh, rules_lib.for_config(config))
  val_batches = [placement.shard_batch(b, batch_sh) for b in data.val_batches]
  final_batches = val_batches if data.final_batches is data.val_batches else [
      placement.shard_batch(b, batch_sh) for b in data.final_batches]
  lr_at = optim.learning_rate_schedule(config.optim, config.train.num_steps)
  t = config.train
  start = int(state.step)
  writer = MetricWriter(workdir, resume_step=start) if main else _Silent()
  progress = Progress(t.num_steps, start_step=start) if main else _Silent()
  meta = {'config': config_dict, 'data': data_id, **trains.meta()}
  tokens_per_step = config.batch_size * config.seq_len
  eval_metrics: dict[str, float] = {}
  pending = None  # (step, state_finite, loss) of the previous step: checked
  # one step late so the host never waits on the step it just dispatched.
  # Wall and process-CPU clocks of the timed steps. The CPU time is what a
  # single-threaded run costs however busy the machine is; wall/CPU says how
  # much of a core it got (the ablations' equal-time claims need both).
  clock = cpu_clock = None
  clock_step = start
  try:
    # The mesh in context lets the MoE layer trace its all-to-alls.
    with jax.set_mesh(mesh), StopRequest() as stop:
      for step in range(start, t.num_steps):
        batch = placement.shard_batch(batches.batch_at(step), batch_sh)
        state, metrics = step_fn(state, batch)
        if pending is not None:
          _check_finite(*pending, ckpt)
        pending = (step + 1, metrics['state_finite'], metrics['loss'])
        done = step + 1
        if clock is None:  # tokens/s leaves out the first step's compile.
          jax.block_until_ready(metrics['loss'])
          clock, cpu_clock, clock_step = (time.perf_counter(),
                                          time.process_time(), done)
        log = done % t.log_every == 0 or done == t.num_steps
        run_eval = done % t.eval_every == 0 or done == t.num_steps
        stopping = stop.signum is not None and done < t.num_steps
        save = (done % t.checkpoint_every == 0 or done == t.num_steps or
                stopping)
        if log or run_eval or save:
          # These wait for the step anyway. Never log, evaluate or save a
          # non-finite state.
          _check_finite(*pending, ckpt)
        if log:
          host = _host(metrics)
          del host['state_finite']  # Checked above; not a curve.
          now, cpu_now = time.perf_counter(), time.process_time()
          if done > clock_step:
            host['tokens_per_sec'] = (done - clock_step) * tokens_per_step / (
                now - clock)
            host['cpu_seconds_per_step'] = (cpu_now - cpu_clock) / (
                done - clock_step)
            host.update(_utilisation(host['tokens_per_sec'], flops_per_token,
                                     peak))
            clock, cpu_clock, clock_step = now, cpu_now, done
          host['learning_rate'] = float(lr_at(done - 1))
          writer.write(done, host)
          progress.update(done, loss=float(host['loss']),
                          **_utilisation_fields(host))
        else:
          progress.update(done)
        if run_eval:
          eval_metrics = evaluate(eval_fn, trains.eval_view(state),
                                  val_batches, unit)
          writer.write(done, eval_metrics)
          progress.report(eval_line(done, eval_metrics, unit))
        if save:
          ckpt.save(done, state, meta)
        if stopping:
          raise TrainingInterrupted(
              f'{stop.name} received: stopped after step {done} and saved a '
              f'checkpoint there; rerun the same command to resume.',
              stop.signum)
        if done % t.eval_every == 0 or done % t.checkpoint_every == 0:
          # Train time only.
          clock, cpu_clock, clock_step = (time.perf_counter(),
                                          time.process_time(), done)
      if pending is not None:
        _check_finite(*pending, ckpt)
      # The whole validation split, once: the run's result. The curve above
      # stays on the same few batches at every step, so it is comparable
      # along itself. (With the old 'tail' split both are the same batches.)
      if final_batches is not val_batches or not eval_metrics:
        eval_metrics = evaluate(eval_fn, trains.eval_view(state),
                                final_batches, unit)
      if start < t.num_steps:  # A finished run's record is already there.
        writer.write(int(state.step), {
            'final_' + k: v for k, v in eval_metrics.items()})
  finally:
    progress.close()
    writer.close()
    ckpt.close()
  say(f'final validation loss {eval_metrics["eval/loss"]:.4f} nats/{unit} '
      f'({eval_metrics[f"eval/bits_per_{unit}"]:.4f} bits/{unit}) at step '
      f'{int(state.step)}\ncheckpoints: {ckpt.directory}\nmetrics: '
      f'{workdir.absolute() / "metrics.jsonl"} (TensorBoard: '
      f'{workdir.absolute() / "tb"})')
  return eval_metrics


def _utilisation(tokens_per_sec: float, flops_per_token: int,
                 peak: float | None) -> dict[str, float]:
  """Achieved training FLOP/s per device, and MFU when the peak is known
  (moe_jax/models/flops.py has the count and the peaks)."""
  achieved = tokens_per_sec * flops_per_token / jax.device_count()
  out = {'flops_per_sec_per_device': achieved}
  if peak:
    out['mfu'] = achieved / peak
  return out


def _utilisation_fields(host: dict[str, Any]) -> dict[str, str]:
  """The progress line's 'TFLOP/s/dev 1.23 MFU 41.0%' (when measured)."""
  fields = {}
  if 'flops_per_sec_per_device' in host:
    fields['TFLOP/s/dev'] = f'{host["flops_per_sec_per_device"] / 1e12:.3g}'
  if 'mfu' in host:
    fields['MFU'] = f'{100 * host["mfu"]:.1f}%'
  return fields


def _describe(mcfg: ModelConfig, params, seq_len: int) -> tuple[str, int]:
  """('4 layers (2 MoE, E=8, K=1), params total ... active/token ...',
  the active count).

  K is the expert passes per token: top_k, or for expert choice and Soft
  MoE their average (MoEConfig.expert_passes_per_token); with N null
  experts the balanced share of real choices, top_k·E/(E+N) (an assumption:
  the measured value is the experts_per_token_mean metric), shown as
  'K=2 (top-4, 8 null)'.
  """
  k = mcfg.moe.expert_passes_per_token(mcfg.moe.group_size or seq_len)
  total, active = count_params(params, k, mcfg.moe.num_experts)
  null = (f' (top-{mcfg.moe.top_k}, {mcfg.moe.num_null_experts} null)'
          if mcfg.moe.num_null_experts else '')
  kind = (f'{mcfg.num_moe_layers} MoE, E={mcfg.moe.num_experts}, '
          f'K={k:g}{null}' if mcfg.num_moe_layers else 'dense')
  return (f'{mcfg.num_layers} layers ({kind}), params total {total:,} '
          f'active/token {active:,}'), active


class _Silent:
  """Stands in for the metric writer and progress bar on other processes."""

  def __getattr__(self, name):
    return lambda *args, **kwargs: None


def _check_finite(step: int, finite, loss, ckpt: Checkpointer) -> None:
  finite, loss = jax.device_get((finite, loss))
  if bool(finite):
    return
  last = ckpt.latest_step()
  kept = (f'The last good checkpoint (step {last}) is kept in '
          f'{ckpt.directory}' if last is not None else
          'No checkpoint had been saved')
  raise NonFiniteLossError(
      f'training diverged at step {step}; stopped without saving (loss '
      f'{float(loss):.4g}; the loss, gradients or updated state hold NaN or '
      f'inf). {kept}; lower --config.optim.learning_rate or raise '
      '--config.moe.z_loss_weight.')
