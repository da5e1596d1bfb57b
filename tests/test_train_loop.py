"""End-to-end tests of the training loop (moe_jax.train.trainer) in-process.

Every run uses a `:tiny` config so it takes seconds. A module-wide persistent
compilation cache lets runs that differ only in host-side settings (log_every,
workdir) reuse the XLA executables instead of recompiling them; it changes
nothing that is computed.
"""

import contextlib
import functools
import importlib.util
import io
import json
import math
import pathlib
import re
import struct

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from moe_jax.core.routing import switch as switch_lib
from moe_jax.models import flops as flops_lib
from moe_jax.models.param_count import count_params
from moe_jax.models.transformer import TransformerLM
from moe_jax.train import evaluate, optim, setup, trainer
from moe_jax.train.step import lm_loss, train_step

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(REPO.glob('configs/*.py'))
LN_VOCAB = math.log(256)  # The loss of a uniform guess over bytes.


# ---------------------------------------------------------------- helpers --


@pytest.fixture(scope='module', autouse=True)
def _cache(compilation_cache_on):
  del compilation_cache_on  # Active for the whole module.


def _load_config(path, arg=None, **overrides):
  """get_config(arg) of a config file, locked (a typo fails), overridden.

  Overrides are flattened names with '__' for '.', e.g. train__num_steps=4.
  """
  spec = importlib.util.spec_from_file_location(f'_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  config.lock()
  config.update_from_flattened_dict(
      {k.replace('__', '.'): v for k, v in overrides.items()})
  return config


def _tiny(name, **overrides):
  return _load_config(REPO / 'configs' / f'{name}.py', 'tiny', **overrides)


def _train(config, workdir):
  """Runs train_and_evaluate; returns (final eval metrics, its stdout)."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    result = trainer.train_and_evaluate(config, str(workdir))
  return result, out.getvalue()


def _records(workdir):
  lines = (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()
  return [json.loads(line) for line in lines]


def _train_records(workdir):
  return [r for r in _records(workdir) if 'loss' in r]


def _eval_records(workdir):
  return [r for r in _records(workdir) if 'eval/loss' in r]


def _saved_state(workdir, step):
  """The raw (dtype-preserving) TrainState tree saved at `step`."""
  path = pathlib.Path(workdir) / 'checkpoints' / str(step) / 'state'
  return ocp.StandardCheckpointer().restore(path)


def _init(config):
  """(graphdef, TrainState at step 0, optimizer) as the trainer builds them."""
  mcfg = setup.model_config(config)
  graphdef, state, _, tx = setup.init_state(
      mcfg, config, setup.make_mesh(config, mcfg))
  return graphdef, state, tx


def _abstract_state(config):
  """(params, opt_state) of the config as ShapeDtypeStructs, never allocated.

  Built as init_state builds them, but traced only: a full-size model costs
  nothing. (init_state itself places arrays on the mesh, which needs
  concrete values.)
  """
  mcfg = setup.model_config(config)
  model = nnx.eval_shape(
      lambda: TransformerLM(mcfg, rngs=nnx.Rngs(config.seed)))
  params = nnx.state(model, nnx.Param)
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  return params, jax.eval_shape(tx.init, params)


def _tb_tags(tb_dir):
  """The set of scalar tags in every TensorBoard event file under tb_dir."""
  # Imported here: only this helper needs tensorboardX's protos.
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  tags = set()
  for path in tb_dir.glob('events.out.tfevents.*'):
    buf = path.read_bytes()
    pos = 0
    while pos < len(buf):  # TFRecord: u64 length, u32 crc, data, u32 crc.
      (length,) = struct.unpack('<Q', buf[pos:pos + 8])
      event = event_pb2.Event.FromString(buf[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      tags.update(v.tag for v in event.summary.value)
  return tags


def _moe_layers(config):
  mcfg = setup.model_config(config)
  return [i for i in range(mcfg.num_layers) if mcfg.is_moe_layer(i)]


@pytest.fixture(scope='module')
def switch_run(tmp_path_factory):
  """One tiny Switch run logging every step, shared by several tests."""
  # A made-up peak (1 GFLOP/s) so the CPU run logs an MFU.
  config = _tiny('switch_top1', train__log_every=1,
                 train__peak_flops_per_device=1e9)
  workdir = tmp_path_factory.mktemp('switch_run')
  result, stdout = _train(config, workdir)
  return config, workdir, result, stdout


# ------------------------------------------------------------------ tests --


@pytest.mark.slow
def test_a_few_steps_reduce_the_loss(switch_run):
  config, workdir, result, _ = switch_run
  train = _train_records(workdir)
  num_steps = config.train.num_steps
  assert [r['step'] for r in train] == list(range(1, num_steps + 1))
  # Untrained, the model is about as good as a uniform guess over 256 bytes.
  assert train[0]['loss'] > LN_VOCAB - 0.3
  assert train[-1]['loss'] < train[0]['loss'] - 0.25
  evals = _eval_records(workdir)
  assert [r['step'] for r in evals] == [3, 6]
  assert evals[-1]['eval/loss'] < evals[0]['eval/loss']
  assert evals[-1]['eval/loss'] < LN_VOCAB - 0.15
  # The result is the final evaluation over the whole validation split,
  # recorded apart from the curve.
  final = [r for r in _records(workdir) if 'final_eval/loss' in r]
  assert len(final) == 1 and final[0]['step'] == num_steps
  assert result['eval/loss'] == final[0]['final_eval/loss']


@pytest.mark.slow
def test_overfits_a_single_batch():
  config = _tiny('switch_top1', train__num_steps=30)
  batches = setup.load_data(config).batches
  graphdef, state, tx = _init(config)
  step_fn = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx))
  batch = batches.batch_at(0)
  losses = []
  for _ in range(config.train.num_steps):
    state, metrics = step_fn(state, batch)
    losses.append(float(metrics['loss']))
  assert all(math.isfinite(x) for x in losses)
  # Fresh batches would stay near 5 nats after 30 steps; memorising one
  # batch of 128 bytes gets far below that.
  assert losses[-1] < losses[0] - 2.0, losses
  assert losses[-1] < 3.5, losses


def test_config_files_are_found():
  # An empty glob would silently parametrize the next test away.
  found = {p.stem for p in CONFIG_FILES}
  assert {'dense', 'switch_top1', 'gshard_top2'} <= found


@pytest.mark.slow
@pytest.mark.parametrize('path', CONFIG_FILES, ids=lambda p: p.stem)
def test_every_config_builds_and_trains(path, tmp_path):
  # The full-size model, traced only: shapes and dtypes without allocation.
  full = _load_config(path)
  mcfg = setup.model_config(full)
  abstract = _abstract_state(full)
  leaves = jax.tree.leaves(abstract)
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  params = jax.tree.leaves_with_path(abstract[0])
  assert all(leaf.dtype == jnp.float32 for _, leaf in params)
  shapes = {jax.tree_util.keystr(p): leaf.shape for p, leaf in params}
  d, e, f = mcfg.d_model, mcfg.moe.num_experts, mcfg.moe.d_ff
  assert shapes["['embed'].value"] == (256, d)
  router_shapes = [s for k, s in shapes.items() if 'router_kernel' in k]
  # E logits per token (Soft MoE: its E·P slot logits).
  assert router_shapes == [(d, mcfg.moe.num_router_outputs)
                          ] * mcfg.num_moe_layers
  expert_shapes = [s for k, s in shapes.items()
                   if k.endswith("['ffn']['wi'].value") and len(s) == 3]
  assert expert_shapes == [(e, d, f)] * mcfg.num_moe_layers

  # The tiny variant end to end: train, evaluate, checkpoint.
  tiny = _load_config(path, 'tiny')
  result, stdout = _train(tiny, tmp_path)
  header = stdout.splitlines()[0]
  # A dense model's header says so, not '0 MoE, E=8, K=1'.
  assert ('(dense)' in header) == (mcfg.num_moe_layers == 0), header
  assert ('MoE' in header) == (mcfg.num_moe_layers > 0), header
  assert math.isfinite(result['eval/loss'])
  assert (tmp_path / 'checkpoints' / str(tiny.train.num_steps)).is_dir()
  assert all(math.isfinite(r['loss']) for r in _train_records(tmp_path))


def _dot_input_dtypes(jaxpr):
  """Operand dtypes of every dot_general in a jaxpr, nested ones included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      found.append(tuple(v.aval.dtype for v in eqn.invars))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      found.extend(_dot_input_dtypes(sub))
  return found


@pytest.mark.slow
def test_bfloat16_trains_with_float32_router_and_params(tmp_path, monkeypatch):
  config = _tiny('switch_top1', model__dtype='bfloat16', train__log_every=1)
  # Record what the router sees: moe_apply looks it up on the module at
  # trace time, through MoEConfig.router_fn.
  logits_dtypes = []
  real_router = switch_lib.switch_top1

  def spy(logits, **kwargs):
    logits_dtypes.append(logits.dtype)
    return real_router(logits, **kwargs)

  monkeypatch.setattr(switch_lib, 'switch_top1', spy)
  result, _ = _train(config, tmp_path)

  assert logits_dtypes, 'the Switch router was never called'
  assert set(logits_dtypes) == {jnp.dtype(jnp.float32)}
  losses = [r['loss'] for r in _train_records(tmp_path)]
  assert all(math.isfinite(x) for x in losses)
  assert losses[-1] < losses[0] - 0.25, losses
  assert math.isfinite(result['eval/loss'])
  saved = _saved_state(tmp_path, config.train.num_steps)
  for tree in (saved['params'], saved['opt_state']):
    dtypes = {np.dtype(x.dtype) for x in jax.tree.leaves(tree)
              if np.issubdtype(x.dtype, np.floating)}
    assert dtypes == {np.dtype(np.float32)}

  # The flag did switch the bulk of the compute to bfloat16 (else this test
  # would pass with it ignored).
  graphdef, state, _ = _init(config)
  batches = setup.load_data(config).batches
  jaxpr = jax.make_jaxpr(lambda params, batch: lm_loss(
      params, graphdef, batch, train=True, key=jax.random.PRNGKey(0)))(
          state.params, batches.batch_at(0))
  dots = _dot_input_dtypes(jaxpr.jaxpr)
  assert (jnp.dtype(jnp.bfloat16),) * 2 in dots


@pytest.mark.slow
def test_metrics_jsonl_and_tensorboard(switch_run):
  config, workdir, _, stdout = switch_run
  num_experts, top_k = config.moe.num_experts, config.moe.top_k
  layers = _moe_layers(config)
  assert layers == [1]
  mcfg = setup.model_config(config)
  header = re.search(r'active/token ([\d,]+)', stdout).group(1)
  flops_per_token = flops_lib.for_model(mcfg, int(header.replace(',', '')),
                                        config.seq_len)
  train = _train_records(workdir)
  for r in train:
    for key in ('loss', 'cross_entropy', 'aux_loss', 'learning_rate'):
      assert math.isfinite(r[key]), (key, r)
    # Warmup starts at 0, so only the first update has a zero rate.
    assert (r['step'] == 1 or r['learning_rate'] > 0), r
    assert 0 <= r['learning_rate'] <= config.optim.learning_rate * (1 + 1e-6)
    if r['step'] > 1:  # The first step's time is mostly compilation.
      assert r['tokens_per_sec'] > 0
      # Achieved FLOP/s per device and MFU (moe_jax/models/flops.py).
      flops = r['tokens_per_sec'] * flops_per_token / jax.device_count()
      assert r['flops_per_sec_per_device'] == pytest.approx(flops, rel=1e-6)
      assert r['mfu'] == pytest.approx(flops / 1e9, rel=1e-6)
    for i in layers:
      p = f'moe_{i}/'
      assert r[p + 'load_balance_loss'] > 0
      assert r[p + 'z_loss'] >= 0
      fraction = r[p + 'expert_fraction']
      assert len(fraction) == num_experts
      assert sum(fraction) == pytest.approx(1.0, abs=1e-5)
      assert len(r[p + 'dropped_fraction']) == top_k
      assert all(0 <= d <= 1 for d in r[p + 'dropped_fraction'])
      assert 0 <= r[p + 'router_entropy'] <= math.log(num_experts) + 1e-5
    # The logged loss is the cross-entropy plus the weighted router losses.
    aux = sum(config.moe.load_balance_weight * r[f'moe_{i}/load_balance_loss']
              + config.moe.z_loss_weight * r[f'moe_{i}/z_loss'] for i in layers)
    assert r['aux_loss'] == pytest.approx(aux, rel=1e-4)
    assert r['loss'] == pytest.approx(r['cross_entropy'] + aux, rel=1e-5)
  # Warmup then cosine decay towards final_lr_fraction of the peak.
  peak = config.optim.learning_rate
  assert max(r['learning_rate'] for r in train) == pytest.approx(peak)
  assert train[-1]['learning_rate'] < 0.5 * peak

  evals = _eval_records(workdir)
  assert evals
  for r in evals:
    assert r['eval/bits_per_byte'] == pytest.approx(
        r['eval/loss'] / math.log(2))

  tags = _tb_tags(workdir / 'tb')
  assert {'loss', 'learning_rate', 'eval/loss', 'eval/bits_per_byte',
          'moe_1/router_entropy', f'moe_1/expert_fraction/{num_experts - 1}'
          } <= tags


def _counts_and_router_size(config):
  params, _ = _abstract_state(config)
  router_size = sum(leaf.size for p, leaf in jax.tree.leaves_with_path(params)
                    if 'router_kernel' in jax.tree_util.keystr(p))
  counts = count_params(params, config.moe.top_k, config.moe.num_experts)
  return counts, router_size


@pytest.mark.parametrize('arg', [None, 'tiny'])
def test_dense_twin_has_the_switch_active_parameters(arg):
  switch = _load_config(REPO / 'configs' / 'switch_top1.py', arg)
  dense = _load_config(REPO / 'configs' / 'dense.py', arg)
  (switch_total, switch_active), router_size = _counts_and_router_size(switch)
  (dense_total, dense_active), dense_router_size = _counts_and_router_size(
      dense)
  assert switch_active < switch_total
  assert dense_active == dense_total
  assert dense_router_size == 0
  assert router_size == (len(_moe_layers(switch)) * switch.model.d_model *
                         switch.moe.num_experts)
  # A top-1 token uses one expert of width F == d_ff: exactly a dense FFN.
  assert dense_active == switch_active - router_size


def test_reported_parameter_counts(switch_run):
  config, _, _, stdout = switch_run
  match = re.search(r'params total ([\d,]+) active/token ([\d,]+)', stdout)
  assert match, stdout
  reported = tuple(int(g.replace(',', '')) for g in match.groups())
  assert reported == _counts_and_router_size(config)[0]


def test_eval_loss_in_bits_is_named_by_the_data_unit():
  from moe_jax.train.step import EVAL_ROUTING_METRICS  # pylint: disable=g-import-not-at-top
  sums = {'ce_sum': np.float32(6.0), 'count': np.float32(3.0),
          **{name: np.float32(0.0) for name in EVAL_ROUTING_METRICS}}
  eval_fn = lambda state, batch: sums
  for unit in ('byte', 'token'):
    out = evaluate.evaluate(eval_fn, None, [None], unit)
    assert out['eval/loss'] == pytest.approx(2.0)
    assert out[f'eval/bits_per_{unit}'] == pytest.approx(2.0 / math.log(2))
  assert 'eval/bits_per_byte' not in out  # Token data: no per-byte name.
