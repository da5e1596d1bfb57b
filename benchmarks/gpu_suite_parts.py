"""The GPU suite's whole-model and multi-device parts (gpu_suite.py runs
them): the MFU of a MoE LM train step beside its dense twin, and one
executed ragged all-to-all."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from benchmarks import common, train_step
from moe_jax.config.default_config import get_default_config
from moe_jax.models import flops as flops_lib
from moe_jax.parallel import ragged_exchange
from moe_jax.train.setup import model_config

AXIS = 'expert'


def lm_config(s, moe: bool):
  """The suite's LM (gpu_suite.Sizes.lm) and, moe=False, its dense twin.

  The MoE layers are top-2 of width F/2, so K·F equals the dense FFN's
  width: both models have the same active parameters per token.
  """
  d, layers, heads, d_ff, batch, seq = s.lm
  c = get_default_config()
  c.data.kind = 'synthetic'  # Bytes made on the spot: no corpus to read.
  c.data.max_bytes = max(200_000, 4 * batch * seq)
  c.batch_size, c.seq_len = batch, seq
  c.model.update(d_model=d, num_layers=layers, num_heads=heads, d_ff=d_ff,
                 dtype='bfloat16', moe_every=2 if moe else 0)
  c.moe.update(num_experts=8, top_k=2, router='topk', d_ff=d_ff // 2)
  return c


def mfu_part(s, peak_flops: float = 0.0) -> dict:
  """Train-step time, tokens/s, FLOP/s per device and MFU of both models."""
  peak = flops_lib.peak_flops_per_device(peak_flops)
  runs, rows = {}, {}
  for name, moe in (('dense', False), ('moe', True)):
    config = lm_config(s, moe)
    counts, runs[name] = train_step.build(config)
    per_token = flops_lib.for_model(model_config(config),
                                    counts['params_active'], config.seq_len)
    rows[name] = {**counts, 'flops_per_token': per_token}
  ms = timed_ms(runs, s)
  tokens = s.lm[4] * s.lm[5]
  for name, row in rows.items():
    row['step_ms'] = ms[name]
    row['tokens_per_s'] = 1e3 * tokens / ms[name]
    row['flops_per_s_per_device'] = (row['tokens_per_s'] * row['flops_per_token']
                                     / jax.device_count())
    row['mfu'] = None if peak is None else row['flops_per_s_per_device'] / peak
  return {'peak_flops_per_device': peak,
          'peak_from': '--peak-flops' if peak_flops > 0 else 'flops.py table',
          'moe_over_dense_step': rows['moe']['step_ms'] / rows['dense']['step_ms'],
          'rows': [{'model': n, **r} for n, r in rows.items()]}


def timed_ms(fns: dict, s) -> dict[str, float]:
  """Milliseconds per call, in s.repeats interleaved rounds of s.inner."""
  seconds = common.time_interleaved(fns, warmup=1, rounds=s.repeats,
                                    inner=s.inner)
  return {name: 1e3 * t for name, t in seconds.items()}


def expected_exchange(buffers: np.ndarray, sizes: np.ndarray) -> np.ndarray:
  """What every device holds after the exchange, computed on the host.

  buffers [P, P, R, D]: device p's slot q holds the rows for device q, the
  first sizes[p, q] real. Afterwards device p's slot s holds device s's
  slot p, zero past sizes[s, p].
  """
  out = np.swapaxes(buffers, 0, 1).copy()
  rows = np.arange(buffers.shape[2])
  out[rows[None, None, :] >= sizes.T[:, :, None]] = 0
  return out


def all_to_all_part(s) -> dict:
  """One exchange of random-length buffers on all devices, checked, timed."""
  n = jax.device_count()
  if n < 2:
    reason = (f'{n} device ({jax.devices()[0].device_kind}): an all-to-all '
              'needs several')
    print(f'ragged_all_to_all skipped: {reason}', flush=True)
    return {'skipped': reason}
  impl = ragged_exchange.default_impl()
  rng = np.random.default_rng(0)
  r, d = s.a2a_rows, s.D
  sizes = rng.integers(0, r + 1, size=(n, n)).astype(np.int32)
  buffers = rng.normal(size=(n, n, r, d)).astype(np.float32)
  buffers[np.arange(r)[None, None, :] >= sizes[:, :, None]] = 0
  mesh = jax.make_mesh((n,), (AXIS,),
                       axis_types=(jax.sharding.AxisType.Explicit,))

  def run(which):
    def local(b, send, recv):  # [1, P, R, D], [1, P], [1, P] per device.
      return ragged_exchange.exchange(b[0], send[0], recv[0], AXIS,
                                      impl=which)[None]
    spec = P(AXIS)
    f = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 3,
                              out_specs=spec))
    args = [jax.device_put(a, jax.sharding.NamedSharding(mesh, spec))
            for a in (buffers, sizes, np.ascontiguousarray(sizes.T))]
    return lambda: jax.block_until_ready(f(*args)), f(*args)

  fns, results = {}, {}
  for which in dict.fromkeys((impl, 'dense')):
    fns[which], results[which] = run(which)
  want = expected_exchange(buffers, sizes)
  ms = timed_ms(fns, s)
  out = {'devices': n, 'impl': impl, 'rows_per_slot': r, 'D': d,
         'rows_sent': int(sizes.sum()), 'rows_buffered': n * n * r,
         'max_abs_error': float(np.max(np.abs(np.asarray(results[impl])
                                              - want))),
         f'{impl}_ms': ms[impl]}
  if impl != 'dense':
    out['dense_ms'] = ms['dense']
    out[f'{impl}_over_dense'] = ms[impl] / ms['dense']
  else:
    out['note'] = 'XLA:CPU cannot compile ragged-all-to-all: dense ran'
  return out
