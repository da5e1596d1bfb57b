"""Routing traces: every MoE layer's decision for every token, on disk.

A trace is recorded by running a model at eval settings (train=False, no
PRNG key) with `return_routing=True`, which makes the model also hand back
each MoE layer's RoutingPlan and router logits; the model's outputs do not
change (tests/test_analysis_trace.py). The analyses in moe_jax.analysis read
traces only, so they can be run on a trace saved long ago.

Shape letters: N traced tokens (= batches · B · L, in batch order, each
sequence's tokens consecutive), M MoE layers, K choices per token, E experts.

On-disk format (`save_trace` / `load_trace`): one NumPy `.npz` file
(compressed, no pickles) holding exactly the RoutingTrace fields below under
their own names, plus 'meta', a 0-d unicode array with a JSON object:
  format_version (int, FORMAT_VERSION), num_experts (E, real experts),
  num_null_experts (N), top_k (K), capacity (C per group, null when
  dropless), group_size (S), layers, and free-form entries such as 'router',
  'dispatcher', 'domain_names', 'eval_capacity_factor'.
Format 2 (2026-12-06) added 'routed' and 'num_null_experts'; format 1 files
are refused (record them again).
Load it with numpy alone: `np.load(path)['expert']` is [M, N, K].
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable

import jax
import numpy as np
import optax
from flax import nnx

from moe_jax.analysis.choices import layer_choices
from moe_jax.core import routing
from moe_jax.errors import UserInputError

FORMAT_VERSION = 2
NO_DOMAIN = -1  # The domain of a token whose data has no domain labels.

_ARRAY_FIELDS = ('tokens', 'sequence', 'position', 'group_position', 'domain',
                 'loss', 'layers', 'expert', 'gate', 'prob', 'probs',
                 'routed', 'dropped')
# The per-layer fields, [M, N, K or E + N].
_LAYER_FIELDS = ('expert', 'gate', 'prob', 'probs', 'routed', 'dropped')


@dataclasses.dataclass(frozen=True)
class RoutingTrace:
  """Per-token routing of a model over some data.

  Attributes:
    tokens: int32 [N] input byte of each token.
    sequence: int32 [N] index of the sequence (batch row) holding the token.
    position: int32 [N] position of the token in its sequence, 0..L-1.
    group_position: int32 [N] position in its routing group, 0..S-1: the
      order in which tokens claim expert capacity (core/capacity.py).
    domain: int32 [N] domain label, NO_DOMAIN (-1) where the data has none.
    loss: float32 [N] the model's next-byte cross-entropy at the token (nats).
    layers: int32 [M] the block index of each MoE layer.
    expert: int32 [M, N, K] chosen experts; axis K is the k-rank (0 = first
      choice). For the routers whose plan has one column per expert (relu,
      expert_choice: RouterSpec.ranked False) each token's E columns are
      ordered by `prob`, its routed experts first (analysis/choices.py). An
      index >= num_experts is a null expert (E + j is null expert j).
    gate: float32 [M, N, K] the combine weight applied to the expert output;
      0 where the choice was dropped or not routed.
    prob: float32 [M, N, K] the router probability of the chosen expert
      (softmax of the router logits), whether or not it was dropped.
    probs: float32 [M, N, E + N] the router probabilities of all experts,
      null experts last.
    routed: bool [M, N, K] the router meant to send the choice to a real
      expert: False for a null-expert choice and for an expert a ReLU or
      expert-choice router did not pick. Loads and drops count these only.
    dropped: bool [M, N, K] routed but over capacity (not dispatched).
    meta: JSON-serialisable facts about the run (see the module docstring).
  """

  tokens: np.ndarray
  sequence: np.ndarray
  position: np.ndarray
  group_position: np.ndarray
  domain: np.ndarray
  loss: np.ndarray
  layers: np.ndarray
  expert: np.ndarray
  gate: np.ndarray
  prob: np.ndarray
  probs: np.ndarray
  routed: np.ndarray
  dropped: np.ndarray
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def num_tokens(self) -> int:
    return int(self.tokens.shape[0])

  @property
  def num_layers(self) -> int:
    return int(self.expert.shape[0])

  @property
  def num_experts(self) -> int:
    """E, the real experts (null experts excluded)."""
    return int(self.probs.shape[-1]) - self.num_null_experts

  @property
  def num_null_experts(self) -> int:
    return int(self.meta.get('num_null_experts', 0))

  @property
  def top_k(self) -> int:
    return int(self.expert.shape[-1])

  @property
  def has_domains(self) -> bool:
    return bool(np.any(self.domain != NO_DOMAIN))


def _moe_configs(model) -> dict[int, Any]:
  """{block index: MoEConfig} of the model's MoE layers; a one-line error
  for a router with no discrete choices (Soft MoE)."""
  configs = {i: b.ffn.config for i, b in enumerate(model.blocks) if b.is_moe}
  if not configs:
    raise UserInputError('the model has no MoE layer; there is no routing '
                         'to trace.')
  for c in configs.values():
    check_traceable(c.router)
  return configs


def check_traceable(router: str) -> None:
  """A one-line error unless `router` makes discrete (token, expert)
  choices, which is what a trace records."""
  if not routing.get(router).discrete:
    raise UserInputError(
        f'router={router!r} has no discrete choices to trace (its plan is '
        'not a RoutingPlan: e.g. Soft MoE mixes every token into every '
        'slot); trace a model with another router.')


def _forward(states, tokens, targets, *, graphdef, ranked):
  """Per-token loss and each MoE layer's routing decision, as host-ready arrays."""
  model = nnx.merge(graphdef, *states)
  logits, aux = model(tokens, train=False, return_routing=True)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return loss, {i: layer_choices(r['plan'], r['logits'], r['routed'],
                                 ranked=ranked[i])
                for i, r in aux['routing'].items()}


def _capacities(graphdef, states, tokens) -> dict[int, int | None]:
  """Each MoE layer's capacity C (static, so read off an abstract call)."""
  def plans(s, t):
    model = nnx.merge(graphdef, *s)
    _, aux = model(t, train=False, return_routing=True)
    return {i: r['plan'] for i, r in aux['routing'].items()}
  shapes = jax.eval_shape(plans, states, tokens)
  return {i: plan.capacity for i, plan in shapes.items()}


def record_trace(model_or_split, batches: Iterable[dict[str, np.ndarray]],
                 *, meta: dict[str, Any] | None = None) -> RoutingTrace:
  """Runs the model over `batches` and records every MoE layer's routing.

  Args:
    model_or_split: a TransformerLM, or its (graphdef, params) pair, or
      (graphdef, params, router_state) for a router with a loss-free
      balancing bias (the bias steers which experts are chosen).
    batches: dicts with 'inputs' and 'targets' int [B, L] and optionally
      'domains' int [B, L] (as from moe_jax.data.pipeline).
    meta: extra JSON-serialisable entries for trace.meta.

  Returns:
    The RoutingTrace (host arrays).
  """
  if isinstance(model_or_split, tuple):
    graphdef, *states = model_or_split
  else:
    graphdef, *states = nnx.split(model_or_split)
  configs = _moe_configs(nnx.merge(graphdef, *states))
  ranked = {i: c.spec.ranked for i, c in configs.items()}
  forward = jax.jit(lambda s, x, y: _forward(s, x, y, graphdef=graphdef,
                                             ranked=ranked))
  parts = {name: [] for name in _ARRAY_FIELDS if name != 'layers'}
  num_seqs, capacities = 0, None
  for batch in batches:
    inputs = np.asarray(batch['inputs'], np.int32)
    b, length = inputs.shape
    if capacities is None:
      capacities = _capacities(graphdef, states, inputs)
    loss, routing = jax.device_get(
        forward(states, inputs, np.asarray(batch['targets'], np.int32)))
    layers = sorted(routing)
    group_size = routing[layers[0]]['expert'].shape[1]
    flat = np.arange(b * length)
    parts['tokens'].append(inputs.reshape(-1))
    parts['sequence'].append(num_seqs + flat // length)
    parts['position'].append(flat % length)
    # Groups are consecutive runs of S tokens of the flattened batch
    # (core/moe.py:group_tokens), so this is each token's claim order.
    parts['group_position'].append(flat % group_size)
    domains = batch.get('domains')
    parts['domain'].append(
        np.full(b * length, NO_DOMAIN) if domains is None else
        np.asarray(domains).reshape(-1))
    parts['loss'].append(np.asarray(loss).reshape(-1))
    for name in _LAYER_FIELDS:
      per_layer = [routing[i][name] for i in layers]  # each [G, S, K or E]
      parts[name].append(np.stack(
          [a.reshape(b * length, a.shape[-1]) for a in per_layer]))
    num_seqs += b
  if capacities is None:
    raise ValueError('no batches to trace.')
  dtypes = {'loss': np.float32, 'gate': np.float32, 'prob': np.float32,
            'probs': np.float32, 'routed': bool, 'dropped': bool}
  arrays = {}
  for name, chunks in parts.items():
    axis = 1 if name in _LAYER_FIELDS else 0
    arrays[name] = np.concatenate(chunks, axis=axis).astype(
        dtypes.get(name, np.int32))
  arrays['layers'] = np.asarray(layers, np.int32)
  caps = {capacities[i] for i in layers}
  num_null = configs[layers[0]].num_null_experts
  info = {
      'format_version': FORMAT_VERSION,
      'num_experts': int(arrays['probs'].shape[-1]) - num_null,
      'num_null_experts': int(num_null),
      'top_k': int(arrays['expert'].shape[-1]),
      'capacity': caps.pop() if len(caps) == 1 else None,
      'group_size': int(group_size),
      'layers': [int(i) for i in layers],
  }
  info.update(meta or {})
  return RoutingTrace(meta=info, **arrays)


def trace_checkpoint(config, workdir: str, *, batches=None,
                     meta: dict[str, Any] | None = None,
                     **eval_overrides) -> RoutingTrace:
  """Records the routing of the latest checkpoint in `workdir`.

  Args:
    config: the config the checkpoint was trained with.
    workdir: the run's workdir.
    batches: the data to trace; default the batches of the run's final
      evaluation, all of its validation split (which carry domain labels for
      the 'synthetic' data kind), as evaluate_checkpoint scores them.
    meta: extra entries for trace.meta.
    **eval_overrides: as for evaluate_checkpoint, e.g.
      moe__eval_capacity_factor=1.0 to trace the drops at another capacity.
  """
  from moe_jax.train.evaluate import restore_checkpoint  # Heavy; lazy.
  check_traceable(config.moe.router)  # Before the restore's cost.
  r = restore_checkpoint(config, workdir, **eval_overrides)
  m = r.config.moe
  info = {'router': m.router, 'dispatcher': m.dispatcher,
          'eval_capacity_factor': float(m.eval_capacity_factor),
          'workdir': str(workdir)}
  info.update(meta or {})
  with jax.set_mesh(r.mesh):
    # A loss-free balancing bias is training state beside the params.
    split = (r.graphdef, r.params, *r.state.router_states().values())
    return record_trace(split,
                        r.final_batches if batches is None else batches,
                        meta=info)


def save_trace(trace: RoutingTrace, path: str | os.PathLike) -> None:
  """Writes the trace as a compressed .npz (format in the module docstring)."""
  arrays = {name: getattr(trace, name) for name in _ARRAY_FIELDS}
  np.savez_compressed(path, meta=np.asarray(json.dumps(trace.meta)), **arrays)


def load_trace(path: str | os.PathLike) -> RoutingTrace:
  """Reads a trace written by save_trace."""
  with np.load(path, allow_pickle=False) as f:
    meta = json.loads(str(f['meta']))
    version = meta.get('format_version')
    if version != FORMAT_VERSION:
      raise ValueError(f'{path} is routing-trace format {version}; this code '
                       f'reads format {FORMAT_VERSION}: record the trace '
                       'again.')
    missing = [n for n in _ARRAY_FIELDS if n not in f.files]
    if missing:
      raise ValueError(f'{path} lacks trace arrays {missing}.')
    return RoutingTrace(meta=meta, **{n: f[n] for n in _ARRAY_FIELDS})
