"""DeepSeek-V2/V3 routing: group-limited top-k, scaled gates (deepseek.py).

Hugging Face parity of the whole block is in tests/test_deepseek_hf_torch.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from moe_jax.core.config import MoEConfig
from moe_jax.core.routing import deepseek
from moe_jax.core.routing import sigmoid as sigmoid_router
from moe_jax.errors import UserInputError

_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})

V3 = deepseek.Options(n_group=4, topk_group=2, routed_scaling_factor=2.5)
V2 = deepseek.Options(score='softmax', n_group=4, topk_group=2,
                      group_score='max', renormalize=False,
                      routed_scaling_factor=16.0)


def _logit(s):
  s = np.asarray(s, np.float64)
  return np.log(s / (1 - s)).astype(np.float32)[None]


def _route(logits, options, k=2, bias=None, capacity=None):
  return _jit(functools.partial(deepseek.deepseek_top_k, capacity=capacity,
                                k=k, options=options))(logits, bias=bias)


# Affinities of one token over E = 8 experts in 4 groups of 2.
S = [0.9, 0.1, 0.8, 0.7, 0.85, 0.05, 0.6, 0.55]


def test_v3_keeps_the_groups_with_the_best_two_scores():
  # Group scores (sum of each pair): 1.0, 1.5, 0.9, 1.15 -> groups 1 and 3;
  # the best two of experts {2, 3, 6, 7} are 2 (0.8) and 3 (0.7), although
  # 0 (0.9) and 4 (0.85) are the best overall.
  plan, aux = _route(_logit([S]), V3)
  np.testing.assert_array_equal(plan.expert_index[0, 0], [2, 3])
  np.testing.assert_allclose(plan.combine_weights[0, 0],
                             [2.5 * 0.8 / 1.5, 2.5 * 0.7 / 1.5], rtol=1e-6)
  np.testing.assert_array_equal(aux['expert_load'], [0, 0, 1, 1, 0, 0, 0, 0])


def test_group_max_keeps_the_groups_with_the_best_expert():
  # By each group's best score: 0.9, 0.8, 0.85, 0.6 -> groups 0 and 2, whose
  # best are 0 and 4; no renormalisation, factor 1: the gates are s itself.
  options = deepseek.Options(n_group=4, topk_group=2, group_score='max',
                             renormalize=False)
  plan, _ = _route(_logit([S]), options)
  np.testing.assert_array_equal(plan.expert_index[0, 0], [0, 4])
  np.testing.assert_allclose(plan.combine_weights[0, 0], [0.9, 0.85],
                             rtol=1e-6)


def test_bias_steers_groups_and_experts_but_not_gates():
  # +0.5 on expert 5 lifts group 2 to 0.85 + 0.55 = 1.4 (second after
  # group 1's 1.5) and expert 5 to 0.55 selection score: the kept experts are
  # {2, 3, 4, 5}, by selection 4 (0.85), 2 (0.8). The gates use s.
  bias = jnp.array([0, 0, 0, 0, 0, 0.5, 0, 0], jnp.float32)
  plan, _ = _route(_logit([S]), V3, bias=bias)
  np.testing.assert_array_equal(plan.expert_index[0, 0], [4, 2])
  np.testing.assert_allclose(plan.combine_weights[0, 0],
                             [2.5 * 0.85 / 1.65, 2.5 * 0.8 / 1.65], rtol=1e-6)


def _reference(logits, bias, o: deepseek.Options, k):
  """Float64, one token at a time, as the papers describe it."""
  logits = np.asarray(logits, np.float64)
  out_index, out_gates = [], []
  for row in logits.reshape(-1, logits.shape[-1]):
    if o.score == 'sigmoid':
      s = 1 / (1 + np.exp(-row))
    else:
      s = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
    sel = s + bias
    groups = sel.reshape(o.n_group, -1)
    if o.group_score == 'top2_sum':
      gscore = np.sort(groups, axis=-1)[:, -2:].sum(-1)
    else:
      gscore = groups.max(-1)
    kept = np.argsort(-gscore, kind='stable')[:o.topk_group]
    allowed = np.repeat(np.isin(np.arange(o.n_group), kept),
                        groups.shape[1])
    idx = np.argsort(-np.where(allowed, sel, -np.inf), kind='stable')[:k]
    g = s[idx]
    if o.renormalize:
      g = g / g.sum()
    out_index.append(idx)
    out_gates.append(g * o.routed_scaling_factor)
  shape = logits.shape[:-1] + (k,)
  return (np.reshape(out_index, shape), np.reshape(out_gates, shape))


@pytest.mark.parametrize('options', [V3, V2, deepseek.Options(
    score='softmax', n_group=2, topk_group=1, renormalize=True)],
                         ids=['v3', 'v2', 'softmax_renorm'])
@pytest.mark.parametrize('with_bias', [False, True])
def test_matches_a_float64_reference(options, with_bias):
  rng = np.random.default_rng(0)
  e, k = 16, 4
  logits = rng.normal(size=(3, 20, e)).astype(np.float32)
  bias = rng.normal(size=(e,)) * 0.1 if with_bias else np.zeros(e)
  plan, _ = _route(logits, options, k=k,
                   bias=jnp.asarray(bias, jnp.float32) if with_bias else None)
  index, gates = _reference(logits, bias, options, k)
  np.testing.assert_array_equal(plan.expert_index, index)
  np.testing.assert_allclose(plan.combine_weights, gates, rtol=2e-6)


def test_without_groups_it_is_the_sigmoid_router():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(2, 16, 8)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(8,)) * 0.1, jnp.float32)
  for capacity in (None, 3):
    ours, ours_aux = _route(logits, deepseek.Options(), k=2, bias=bias,
                            capacity=capacity)
    ref, ref_aux = _jit(functools.partial(
        sigmoid_router.sigmoid_top_k, capacity=capacity, k=2))(logits,
                                                               bias=bias)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
      np.testing.assert_array_equal(a, b)
    for name in ref_aux:
      np.testing.assert_array_equal(ours_aux[name], ref_aux[name])


@pytest.mark.parametrize('options', [V3, V2], ids=['v3', 'v2'])
def test_gates_gradient(options):
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(1, 6, 8)), jnp.float32)
  r = jnp.asarray(rng.normal(size=(1, 6, 2)), jnp.float32)

  def f(lg):
    plan, aux = deepseek.deepseek_top_k(lg, capacity=None, k=2,
                                        options=options)
    return jnp.sum(plan.combine_weights * r) + aux['load_balance_loss']

  check_grads(jax.jit(f), (logits,), order=1, modes=['rev'], eps=1e-3)
  assert np.any(jax.grad(f)(logits))


def test_a_token_s_choice_ignores_later_tokens():
  # Routing is per token, so dropless (or top-1 with capacity: slots go in
  # position order) is causal: changing the last tokens leaves every earlier
  # token's choices, gates and slots alone. (Top-2 with capacity is not:
  # slots are rank-major, so a later token's first choice can take the slot
  # of an earlier token's second; docs/core.md's causality table.)
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(1, 12, 8)).astype(np.float32)
  changed = logits.copy()
  changed[:, 8:] = rng.normal(size=(1, 4, 8)) * 3
  for k, capacity in ((2, None), (1, 2)):
    a, _ = _route(logits, V3, k=k, capacity=capacity)
    b, _ = _route(changed, V3, k=k, capacity=capacity)
    assert not np.array_equal(a.expert_index, b.expert_index)
    # Dropless slots only order rows within an expert; they drop nothing.
    fields = ('expert_index', 'combine_weights') + ('slot',) * bool(capacity)
    for field in fields:
      np.testing.assert_array_equal(getattr(a, field)[:, :8],
                                    getattr(b, field)[:, :8])


def _config(top_k=2, num_experts=8, **options):
  return MoEConfig(router='deepseek', num_experts=num_experts, top_k=top_k,
                   router_options={'deepseek': options})


@pytest.mark.parametrize('kwargs, match', [
    (dict(n_group=3), 'n_group=3 must divide num_experts=8'),
    (dict(n_group=2, topk_group=3), 'topk_group=3 must be <= n_group=2'),
    (dict(n_group=4, topk_group=1, top_k=3),
     'top_k=3 is more than the 2 experts'),
    (dict(routed_scaling_factor=-1.0), 'routed_scaling_factor=-1.0 must be'),
    (dict(score='relu'), "score='relu' is not valid"),
    (dict(group_score='mean'), "group_score='mean' is not valid"),
    (dict(n_group=8, topk_group=2), "'top2_sum' needs >= 2 experts per group"),
    (dict(n_group=0), 'n_group=0 must be an int >= 1'),
    (dict(renormalize=1), 'renormalize=1 must be True or False'),
])
def test_bad_deepseek_config_is_one_line(kwargs, match):
  with pytest.raises(UserInputError, match=match) as e:
    _config(**kwargs)
  assert '\n' not in str(e.value)


def test_bias_is_router_state_only_when_balancing():
  assert not _config().has_router_bias
  assert _config(bias_update_rate=1e-3).has_router_bias
