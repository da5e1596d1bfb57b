"""train_and_evaluate: the whole training run, from config to checkpoints.

Order matters for "bad input loses nothing": the config, the data and the
workdir's existing checkpoint are all validated before the first write.
"""

from __future__ import annotations

import functools
import math
import pathlib
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from moe_jax.core.config import MoEConfig
from moe_jax.data import fingerprint
from moe_jax.data.pipeline import BatchIterator, eval_batches
from moe_jax.data.sources import load_corpus
from moe_jax.data.split import split_corpus
from moe_jax.data.tokens import check_token_ids
from moe_jax.errors import UserInputError
from moe_jax.models.config import ModelConfig
from moe_jax.models.param_count import count_params
from moe_jax.models.transformer import TransformerLM
from moe_jax.parallel import mesh as mesh_lib
from moe_jax.parallel import placement
from moe_jax.config import validate
from moe_jax.train import init_from, lora_run, optim
from moe_jax.train.checkpoint import Checkpointer, has_checkpoint
from moe_jax.train.interrupt import StopRequest, TrainingInterrupted
from moe_jax.train.metric_writer import MetricWriter, Progress, eval_line
from moe_jax.layers.moe import RouterBias
from moe_jax.train.step import (EVAL_ROUTING_METRICS, RoutedTrainState,
                                 TrainState, eval_step, train_step)


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN or infinite loss, gradient or state."""


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  """The validated ModelConfig (with its MoEConfig) of an experiment."""
  return ModelConfig(max_len=config.seq_len, moe=MoEConfig(**config.moe),
                     **config.model)


class Data(NamedTuple):
  """What a run reads: the corpus, its training batches and its evals."""
  corpus: Any  # The whole Corpus (its name and unit).
  batches: BatchIterator  # Training batches.
  val_batches: list  # Each evaluation during training.
  final_batches: list  # The final evaluation (all of the validation split).
  held_out: str  # What the validation split holds, in words.


def data_seed(config) -> int:
  """The seed of the batch order: data.seed, or the run's seed if unset."""
  return config.seed if config.data.seed is None else config.data.seed


def load_data(config) -> Data:
  """The corpus, its split, and the batches of the config's data section."""
  d = config.data
  corpus = load_corpus(d.kind, d.path, max_bytes=d.max_bytes,
                       num_domains=d.num_domains, seed=data_seed(config),
                       tokenizer=d.tokenizer, token_dtype=d.token_dtype)
  check_token_ids(corpus.tokens, config.model.vocab_size, corpus.name)
  train, val = split_corpus(corpus, d.val_fraction, d.split)
  batches = BatchIterator(train, config.batch_size, config.seq_len,
                          data_seed(config))
  # The old split scored its first eval_batches windows every time.
  spread = d.split != 'tail'
  val_batches = eval_batches(val, config.batch_size, config.seq_len,
                             config.train.eval_batches, spread)
  final = config.train.final_eval_batches
  final_batches = (val_batches if not spread else eval_batches(
      val, config.batch_size, config.seq_len, final))
  return Data(corpus, batches, val_batches, final_batches, val.held_out)


def init_state(mcfg: ModelConfig, config, mesh):
  """(graphdef, TrainState at step 0 placed on `mesh`, its shardings, tx)."""
  tx = optim.make_optimizer(config.optim, config.train.num_steps)

  def init():
    model = TransformerLM(mcfg, rngs=nnx.Rngs(config.seed))
    params = nnx.state(model, nnx.Param)
    if lora_run.enabled(config):  # Train the adapters alone.
      params = lora_run.init_adapters(config, params)
    fields = dict(step=jnp.zeros((), jnp.int32), params=params,
                  opt_state=tx.init(params),
                  rng=jax.random.PRNGKey(config.seed))
    if mcfg.moe.has_router_bias and mcfg.num_moe_layers:
      return RoutedTrainState(**fields,
                              router_state=nnx.state(model, RouterBias))
    return TrainState(**fields)

  graphdef = nnx.graphdef(nnx.eval_shape(
      lambda: TransformerLM(mcfg, rngs=nnx.Rngs(config.seed))))
  state, shardings = placement.init_sharded(init, mesh)
  return graphdef, state, shardings, tx


def make_mesh(config, mcfg: ModelConfig):
  """The config's mesh, checked against the model and batch before compiling."""
  mesh = mesh_lib.make_mesh(tuple(config.mesh.shape))
  tokens, group_size = config.batch_size * config.seq_len, mcfg.moe.group_size
  if group_size and tokens % group_size:
    # group_tokens would say so too, but only when the first step traces,
    # after the model summary.
    raise UserInputError(
        f'moe.group_size={group_size} does not divide the {tokens} tokens of '
        f'a batch (batch_size {config.batch_size} x seq_len '
        f'{config.seq_len}); set --config.moe.group_size to a divisor.')
  num_groups = tokens // group_size if group_size else None
  mesh_lib.check_fits(mesh, num_experts=mcfg.moe.num_experts,
                      batch_size=config.batch_size, num_heads=mcfg.num_heads,
                      d_ff=mcfg.d_ff, num_groups=num_groups,
                      num_kv_heads=mcfg.kv_heads)
  return mesh


def make_eval_fn(graphdef, shardings, batch_sh, mesh):
  """jit(eval_step) as a function of (state, batch).

  A RoutedTrainState's router state (selection biases) is an input too.
  """
  step = functools.partial(eval_step, graphdef=graphdef)
  out = placement.replicated(mesh)
  if isinstance(shardings, RoutedTrainState):
    fn = jax.jit(step, in_shardings=(shardings.params, batch_sh,
                                     shardings.router_state),
                 out_shardings=out)
    return lambda state, batch: fn(state.params, batch, state.router_state)
  fn = jax.jit(step, in_shardings=(shardings.params, batch_sh),
               out_shardings=out)
  return lambda state, batch: fn(state.params, batch)


def evaluate(eval_fn, state, batches, unit: str = 'byte') -> dict[str, float]:
  """Mean loss and routing metrics over the validation batches (on devices).

  eval_fn: (state, batch) -> eval_step's sums (see make_eval_fn).
  unit: what one position is, 'byte' or 'token': the loss in bits is
  reported as 'eval/bits_per_<unit>'.

  'eval/max_violation' etc. are means over batches of the per-batch value
  (itself a mean over MoE layers), so MaxVio is that of a batch's routing.
  """
  sums = [jax.device_get(eval_fn(state, b)) for b in batches]
  ce = sum(float(s['ce_sum']) for s in sums) / sum(float(s['count']) for s in sums)
  out = {'eval/loss': ce, f'eval/bits_per_{unit}': ce / math.log(2)}
  for name in EVAL_ROUTING_METRICS:
    out[f'eval/{name}'] = float(np.mean([s[name] for s in sums]))
  return out


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
  lora_run.check_config(config)
  mcfg = model_config(config)
  data = load_data(config)
  corpus, batches = data.corpus, data.batches
  data_id = fingerprint.data_fingerprint(corpus, config.data.tokenizer)
  unit = corpus.unit.rstrip('s')  # 'byte' or 'token', for the metric names.
  mesh = make_mesh(config, mcfg)
  # A resumed run restores its own parameters, so the init source is read
  # only for a fresh run (before any write, so a bad source costs nothing)
  # or for LoRA, whose frozen base it is.
  init_source = _prepare_init(
      config, mcfg,
      read=not has_checkpoint(workdir) or lora_run.enabled(config))
  ckpt = Checkpointer(workdir, config.train.keep_checkpoints)
  config_dict = config.to_dict()
  note = ckpt.check_compatible(config_dict, data_id)
  # One process writes metrics, prints and draws progress; all of them
  # checkpoint (each writes its own shards).
  main = jax.process_index() == 0
  say = functools.partial(print, flush=True) if main else lambda *_: None
  if note:
    say(note)

  graphdef, state, shardings, tx = init_state(mcfg, config, mesh)
  frozen = None  # LoRA's base parameters.
  if lora_run.enabled(config):
    frozen, frozen_sh = lora_run.frozen_base(mcfg, config, mesh, init_source)
  described = _describe(mcfg, state.params if frozen is None else frozen,
                        config.seq_len)
  say(f'model: {described};'
      f' data {corpus.name} ({len(corpus):,} {corpus.unit}); validation: '
      f'{data.held_out}, {len(data.final_batches)} batches at the end')
  if frozen is not None:
    say(f'LoRA r={config.lora.rank} on {", ".join(config.lora.targets)}: '
        f'{sum(x.size for x in jax.tree.leaves(state.params)):,} trainable '
        'parameters, the rest frozen')
  if ckpt.latest_step() is not None:
    restored, restored_meta = ckpt.restore(
        placement.abstract_with_shardings(state, shardings))
    if restored is None:
      say('no checkpoint restores; starting from step 0')
    else:
      state = restored
      if frozen is not None:
        lora_run.check_base(restored_meta, init_source)
      say(f'resumed from step {int(state.step)} in {ckpt.directory}')
  if config.train.init_from and int(state.step) == 0 and frozen is None:
    if init_source is None:  # Its checkpoints were there but none restored.
      init_source = _prepare_init(config, mcfg)
    state = state.replace(params=init_from.apply(init_source, state.params))
    n = init_source.num_tiled_layers
    upcycled = (f', {n} dense FFN{"s" * (n > 1)} upcycled into '
                f'{mcfg.moe.num_experts} experts each' if n else '')
    say(f'initialised from step {init_source.step} of {init_source.workdir}'
        f'{upcycled}')

  batch_sh = placement.batch_shardings(mesh, batches.batch_at(0))
  replicated = placement.replicated(mesh)
  step_fn = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx),
                    in_shardings=(shardings, batch_sh),
                    out_shardings=(shardings, replicated), donate_argnums=0)
  eval_fn = make_eval_fn(graphdef, shardings, batch_sh, mesh)
  eval_view = lambda state: state
  if frozen is not None:
    lora_step = jax.jit(
        functools.partial(train_step, graphdef=graphdef, tx=tx,
                          lora_scale=lora_run.scale(config)),
        in_shardings=(shardings, batch_sh, frozen_sh),
        out_shardings=(shardings, replicated), donate_argnums=0)
    step_fn = lambda state, batch: lora_step(state, batch, frozen)
    eval_fn = make_eval_fn(graphdef, shardings.replace(params=frozen_sh),
                           batch_sh, mesh)
    eval_view = lora_run.merged_view(frozen, frozen_sh, config)
  val_batches = [placement.shard_batch(b, batch_sh) for b in data.val_batches]
  final_batches = val_batches if data.final_batches is data.val_batches else [
      placement.shard_batch(b, batch_sh) for b in data.final_batches]
  lr_at = optim.learning_rate_schedule(config.optim, config.train.num_steps)
  t = config.train
  start = int(state.step)
  writer = MetricWriter(workdir, resume_step=start) if main else _Silent()
  progress = Progress(t.num_steps, start_step=start) if main else _Silent()
  meta = {'config': config_dict, 'data': data_id}
  if frozen is not None:
    meta['lora_base'] = lora_run.base_reference(init_source)
  tokens_per_step = config.batch_size * config.seq_len
  eval_metrics: dict[str, float] = {}
  pending = None  # (step, state_finite, loss) of the previous step: checked
  # one step late so the host never waits on the step it just dispatched.
  clock, clock_step = None, start
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
          clock, clock_step = time.perf_counter(), done
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
          now = time.perf_counter()
          if done > clock_step:
            host['tokens_per_sec'] = (done - clock_step) * tokens_per_step / (
                now - clock)
            clock, clock_step = now, done
          host['learning_rate'] = float(lr_at(done - 1))
          writer.write(done, host)
          progress.update(done, loss=float(host['loss']))
        else:
          progress.update(done)
        if run_eval:
          eval_metrics = evaluate(eval_fn, eval_view(state), val_batches,
                                  unit)
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
          clock, clock_step = time.perf_counter(), done  # Train time only.
      if pending is not None:
        _check_finite(*pending, ckpt)
      # The whole validation split, once: the run's result. The curve above
      # stays on the same few batches at every step, so it is comparable
      # along itself. (With the old 'tail' split both are the same batches.)
      if final_batches is not val_batches or not eval_metrics:
        eval_metrics = evaluate(eval_fn, eval_view(state), final_batches,
                                unit)
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


def _prepare_init(config, mcfg: ModelConfig, read: bool = True):
  """train.init_from's checked InitSource, or None (none set, or not `read`)."""
  t = config.train
  if t.upcycle and not t.init_from:
    raise UserInputError('train.upcycle=True needs the dense run to start '
                         'from; set --config.train.init_from=<its workdir>.')
  if not t.init_from or not read:
    return None
  return init_from.prepare(
      t.init_from, t.upcycle,
      lambda: TransformerLM(mcfg, rngs=nnx.Rngs(config.seed)))


def _describe(mcfg: ModelConfig, params, seq_len: int) -> str:
  """'4 layers (2 MoE, E=8, K=1), params total ... active/token ...'.

  K is the expert passes per token: top_k, or for expert choice and Soft
  MoE their average (MoEConfig.expert_passes_per_token).
  """
  k = mcfg.moe.expert_passes_per_token(mcfg.moe.group_size or seq_len)
  total, active = count_params(params, k, mcfg.moe.num_experts)
  kind = (f'{mcfg.num_moe_layers} MoE, E={mcfg.moe.num_experts}, '
          f'K={k:g}' if mcfg.num_moe_layers else 'dense')
  return (f'{mcfg.num_layers} layers ({kind}), params total {total:,} '
          f'active/token {active:,}')


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
