"""Cached generation (moe_jax/generation/): the KV cache reproduces the full
forward, greedy decoding equals a recompute-everything reference, sampling
is seeded and its filters have the right limits, and bad input is one line.

The trained-model and command-line tests are in tests/test_sample.py; the
comparison with transformers' own generate in tests/test_generate_hf_torch.py.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moe_jax.core.config import MoEConfig
from moe_jax.errors import UserInputError
from moe_jax.generation import (GREEDY, Sampling, decode_moe_config,
                                decode_step, filter_logits, generate,
                                pad_prompts, prefill, sample)
from moe_jax.models import KVCache, ModelConfig, TransformerLM
from testlib import randomize_params

V = 61
LENGTHS = (5, 11, 2)  # Prompts of different lengths in one batch.

# eval cf = E/K makes C = S: the full forward drops nothing, so it is the
# reference the dropless decode must equal.
_MOE = MoEConfig(num_experts=4, top_k=2, router='topk', d_ff=24,
                 expert_type='swiglu', dispatcher='index',
                 eval_capacity_factor=2.0, min_capacity=1)
CONFIGS = {
    'dense': ModelConfig(vocab_size=V, d_model=32, num_layers=2, num_heads=4,
                         num_kv_heads=2, d_ff=48, max_len=32, moe_every=0),
    'moe': ModelConfig(vocab_size=V, d_model=32, num_layers=2, num_heads=4,
                       num_kv_heads=2, d_ff=48, max_len=32, moe=_MOE,
                       moe_every=1, qkv_bias=True, first_dense_layers=1),
    # Learned positions and a tied head take the other branches.
    'learned': ModelConfig(vocab_size=V, d_model=32, num_layers=1,
                           num_heads=2, d_ff=48, max_len=32,
                           position='learned', tie_embeddings=True,
                           moe=_MOE, moe_every=1),
    # A window shorter than the prompts: the cache must mask old slots.
    'window': ModelConfig(vocab_size=V, d_model=32, num_layers=2,
                          num_heads=4, num_kv_heads=2, d_ff=48, max_len=32,
                          moe=_MOE, moe_every=1, sliding_window=3),
    # QK-norm before RoPE (per head, Qwen3) with a head width apart from
    # D/H: the cache holds the normed, rotated keys of Dh = 12.
    'qk_norm': ModelConfig(vocab_size=V, d_model=32, num_layers=1,
                           num_heads=4, num_kv_heads=2, head_dim=12, d_ff=48,
                           max_len=32, moe=_MOE, moe_every=1,
                           qk_norm='per_head'),
    # YaRN (models/yarn.py): cached keys rotated by the scaled frequencies
    # at their own positions, past the pretraining context of 4.
    'yarn': ModelConfig(vocab_size=V, d_model=32, num_layers=1, num_heads=4,
                        num_kv_heads=2, d_ff=48, max_len=32, moe=_MOE,
                        moe_every=1, rope_scaling=dict(
                            factor=4.0, original_max_len=4)),
    # gpt-oss: sinks, q/k/v/o biases, a window in layer 0 and full attention
    # in layer 1, clamped SwiGLU experts with router and expert biases.
    'gpt_oss': ModelConfig(vocab_size=V, d_model=32, num_layers=2,
                           num_heads=4, num_kv_heads=2, d_ff=48, max_len=32,
                           moe=dataclasses.replace(
                               _MOE, expert_type='swiglu_clamped',
                               use_bias=True),
                           moe_every=1, qkv_bias=True, attn_out_bias=True,
                           attention_sinks=True, sliding_window=3,
                           full_attention_every=2),
    # Multi-head latent attention: the cache holds the latent and the rope
    # key, and decoding reads it in the absorbed form (models/mla.py).
    'mla': ModelConfig(vocab_size=V, d_model=32, num_layers=2, num_heads=4,
                       d_ff=48, max_len=32, moe=_MOE, moe_every=1,
                       first_dense_layers=1,
                       mla=dict(kv_lora_rank=12, qk_nope_head_dim=6,
                                qk_rope_head_dim=4, v_head_dim=5,
                                q_lora_rank=10)),
}


@pytest.fixture(scope='module')
def models():
  out = {}
  for name, config in CONFIGS.items():
    model = TransformerLM(config, rngs=nnx.Rngs(1))
    if config.qkv_bias:  # Zero-initialised: make them matter.
      for block in model.blocks:
        for n in 'qkv':
          b = getattr(block.attn, 'b' + n)
          b[...] = jax.random.normal(jax.random.key(ord(n)), b.shape) * 0.5
    if config.qk_norm:  # Ones at init: make the scales matter too.
      for block in model.blocks:
        for norm in (block.attn.q_norm, block.attn.k_norm):
          norm.scale[...] = jax.random.uniform(jax.random.key(7),
                                               norm.scale.shape) + 0.5
    if config.attention_sinks:  # Its sinks and biases start at 0 too.
      randomize_params(model, ('bo', 'sinks', 'bi', 'bi_gate',
                               'router_bias_logits'))
    out[name] = model
  return out


def _sequences(seed=0, length=24):
  return np.random.default_rng(seed).integers(0, V, (len(LENGTHS), length))


# Jitted once per model and shape: on a busy 2-core CPU, eager op-by-op
# execution compiles every primitive for every new shape.
@nnx.jit
def _forward(model, tokens):
  return model(tokens)[0]


_prefill = nnx.jit(prefill, static_argnames='moe_config')
_decode_step = nnx.jit(decode_step, static_argnames='moe_config')


@pytest.mark.parametrize('name,moe', [('dense', 'dropless'),
                                      ('moe', 'dropless'),
                                      ('moe', 'capacity'),
                                      ('learned', 'dropless'),
                                      ('window', 'dropless'),
                                      ('qk_norm', 'dropless'),
                                      ('yarn', 'dropless'),
                                      ('gpt_oss', 'dropless'),
                                      ('mla', 'dropless')])
def test_cached_logits_equal_full_forward(models, name, moe):
  """Teacher-forced: prefill each prompt, then feed the true next tokens one
  at a time; every step's logits equal the full forward's at that position."""
  model, config = models[name], CONFIGS[name]
  seq = _sequences()
  full = _forward(model, jnp.asarray(seq))  # [B, L, V], no padding at all.
  tokens, lengths = pad_prompts([s[:n] for s, n in zip(seq, LENGTHS)], V)
  # Pads of another value than 0: they must not leak into any real row.
  tokens = np.where(np.arange(tokens.shape[1]) < lengths[:, None], tokens, 7)
  moe_config = decode_moe_config(config, moe)
  cache = KVCache.zeros(config, len(LENGTHS), seq.shape[1])
  rows = np.arange(len(LENGTHS))
  logits, cache = _prefill(model, jnp.asarray(tokens), jnp.asarray(lengths),
                           cache, moe_config)
  errors = [np.abs(logits - full[rows, lengths - 1]).max()]
  positions = lengths.copy()
  for _ in range(seq.shape[1] - max(LENGTHS)):
    logits, cache = _decode_step(model, jnp.asarray(seq[rows, positions]),
                                 jnp.asarray(positions), cache, moe_config)
    errors.append(np.abs(logits - full[rows, positions]).max())
    positions += 1
  assert len(errors) == 14 and max(errors) <= 1e-5, errors


def test_cache_holds_only_the_kv_heads():
  cache = KVCache.zeros(CONFIGS['moe'], 3, 20)
  assert len(cache.k) == 2 and cache.k[0].shape == (3, 20, 2, 8)


def _naive_greedy(model, prompts, n):
  """Recompute the whole forward for every new token; argmax.

  The sequences sit in a fixed [B, 24] buffer (one compile): the forward is
  causal and drops nothing, so what lies after a row's end changes nothing
  before it.
  """
  seqs = np.zeros((len(prompts), 24), np.int32)
  ends = np.array([len(p) for p in prompts])
  for row, prompt in enumerate(prompts):
    seqs[row, :len(prompt)] = prompt
  rows = np.arange(len(prompts))
  for _ in range(n):
    logits = _forward(model, jnp.asarray(seqs))
    seqs[rows, ends] = np.argmax(logits[rows, ends - 1], axis=-1)
    ends += 1
  return [list(s[len(p):len(p) + n]) for s, p in zip(seqs, prompts)]


@pytest.fixture(scope='module')
def greedy(models):
  prompts = [list(s[:n]) for s, n in zip(_sequences(1), LENGTHS)]
  return prompts, generate(models['moe'], prompts, max_new_tokens=8)


def test_greedy_equals_recomputing_the_forward(models, greedy):
  prompts, out = greedy
  assert [list(r) for r in out.tokens] == _naive_greedy(models['moe'],
                                                        prompts, 8)
  assert list(out.lengths) == [8, 8, 8]


def test_stop_token_ends_a_row(models, greedy):
  prompts, out = greedy
  stop = int(out.tokens[0, 2])
  first = [int(np.argmax(np.append(r == stop, True))) for r in out.tokens]
  stopped = generate(models['moe'], prompts, max_new_tokens=8,
                     stop_token=stop)
  for row, new, n, count in zip(out.tokens, stopped.tokens, first,
                                stopped.lengths):
    assert count == min(n + 1, 8)
    assert list(new[:count]) == list(row[:count])
    assert not new[count:].any()


def test_same_seed_same_tokens_other_seed_other_tokens(models, greedy):
  prompts, _ = greedy
  run = lambda key, s=Sampling(temperature=1.0): generate(
      models['moe'], prompts, max_new_tokens=8, sampling=s, key=key).tokens
  a = run(0)
  np.testing.assert_array_equal(a, run(0))
  np.testing.assert_array_equal(a, run(jax.random.key(0)))
  assert (a != run(1)).any()


def test_top_k_one_is_greedy(models, greedy):
  prompts, out = greedy
  topk = generate(models['moe'], prompts, max_new_tokens=8, key=3,
                  sampling=Sampling(temperature=1.5, top_k=1))
  np.testing.assert_array_equal(topk.tokens, out.tokens)


@pytest.mark.parametrize('sampling', [
    Sampling(temperature=1.0, top_k=1), Sampling(temperature=1.0, top_p=1e-6),
    Sampling(temperature=1e-30), Sampling(temperature=2.0, top_k=5,
                                          top_p=1e-3)])
def test_limits_of_the_filters_are_greedy(sampling):
  logits = jax.random.normal(jax.random.key(0), (64, V)) * 3
  argmax = sample(logits, None, GREEDY)
  for seed in range(3):
    np.testing.assert_array_equal(
        sample(logits, jax.random.key(seed), sampling), argmax)


def test_filters_keep_what_they_should():
  logits = jnp.log(jnp.array([[0.1, 0.5, 0.15, 0.25]]))
  kept = lambda s: np.isfinite(filter_logits(logits, *s.arrays()))[0].tolist()
  assert kept(Sampling(top_k=2)) == [False, True, False, True]
  # 0.5 < 0.6 <= 0.5 + 0.25: the two most likely.
  assert kept(Sampling(top_p=0.6)) == [False, True, False, True]
  assert kept(Sampling(top_p=0.75)) == [False, True, False, True]
  assert kept(Sampling(top_p=0.76)) == [False, True, True, True]
  assert kept(Sampling(top_p=1.0)) == [True] * 4
  # Temperature 0.5 squares the probabilities (up to normalisation).
  p = jax.nn.softmax(filter_logits(logits, *Sampling(temperature=0.5).arrays()))
  q = np.array([0.1, 0.5, 0.15, 0.25]) ** 2
  np.testing.assert_allclose(p[0], q / q.sum(), rtol=1e-5)


def test_samples_follow_the_distribution():
  probs = np.array([0.1, 0.5, 0.15, 0.25])
  logits = jnp.broadcast_to(jnp.log(probs), (20000, 4))
  draws = sample(logits, jax.random.key(0), Sampling())
  freq = np.bincount(np.asarray(draws), minlength=4) / 20000
  np.testing.assert_allclose(freq, probs, atol=0.015)


@pytest.mark.parametrize('router,options,match', [
    ('expert_choice', {}, 'token by token'),
    ('soft', {'router_options': {'soft': {'slots_per_expert': 4}}},
     'token by token'),
    ('uniform', {}, 'by its position in its group')])
def test_group_wide_routers_are_refused(router, options, match):
  moe = MoEConfig(num_experts=4, router=router, d_ff=8, **options)
  config = dataclasses.replace(CONFIGS['dense'], moe=moe, moe_every=1)
  model = TransformerLM(config, rngs=nnx.Rngs(0))
  with pytest.raises(UserInputError, match=match) as e:
    generate(model, [[1, 2]], max_new_tokens=2)
  assert '\n' not in str(e.value)


@pytest.mark.parametrize('kwargs,match', [
    (dict(prompts=[[1, 2], []]), 'prompt 1 is empty'),
    (dict(prompts=[]), 'non-empty list'),
    (dict(prompts=[[1, V]]), r'outside \[0, 61\)'),
    (dict(prompts=[[1] * 30], max_new_tokens=3), "max_len=32"),
    (dict(max_new_tokens=0), 'max_new_tokens=0'),
    (dict(stop_token=V), 'stop_token=61'),
    (dict(moe='drop'), "moe='drop'"),
])
def test_bad_input_is_one_line(models, kwargs, match):
  args = dict(prompts=[[1, 2]], max_new_tokens=2) | kwargs
  with pytest.raises(UserInputError, match=match) as e:
    generate(models['dense'], args.pop('prompts'), **args)
  assert '\n' not in str(e.value)


@pytest.mark.parametrize('kwargs,match', [
    (dict(top_p=0.0), r'top_p=0\.0 must be in \(0, 1\]'),
    (dict(top_p=1.5), r'top_p=1\.5'),
    (dict(temperature=-1.0), 'temperature=-1.0'),
    (dict(temperature=1e-50), 'greedy'),
    (dict(temperature=float('nan')), 'temperature=nan'),
    (dict(top_k=0), 'top_k=0'),
])
def test_bad_sampling_is_one_line(kwargs, match):
  with pytest.raises(UserInputError, match=match) as e:
    Sampling(**kwargs)
  assert '\n' not in str(e.value)
