"""Drop-Upcycling (moe_jax/train/drop_upcycle.py): train.upcycle_drop_fraction."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moe_jax.config import validate
from moe_jax.errors import UserInputError
from moe_jax.train import drop_upcycle, init_from
from tests import testlib


class _ConstantNormal:
  """Stands in for a numpy Generator: every 'draw' is μ + σ, so the test can
  compute the re-drawn values by hand."""

  def normal(self, loc, scale, size):
    return np.full(size, loc + scale)


def test_redraw_by_hand():
  dense = np.array([[0., 1., 2., 3.], [4., 5., 6., 7.]])  # wi [D=2, F=4]
  got = drop_upcycle.redraw(dense, dense, np.array([1, 3]), 1,
                            _ConstantNormal())
  # Columns 1 and 3 hold 1, 3, 5, 7: mean 4, sample std sqrt(20/3).
  new = 4 + math.sqrt(20 / 3)
  np.testing.assert_allclose(got, [[0, new, 2, new], [4, new, 6, new]])
  # wo [F=4, D=2]: rows 0 and 2 hold 0, 1, 4, 5: mean 2.5, squared
  # deviations 6.25 + 2.25 + 2.25 + 6.25 = 17, std sqrt(17/3).
  wo = np.arange(8.).reshape(4, 2)
  got = drop_upcycle.redraw(wo, wo, np.array([0, 2]), 0, _ConstantNormal())
  new = 2.5 + math.sqrt(17 / 3)
  np.testing.assert_allclose(got, [[new, new], [2, 3], [new, new], [6, 7]])
  assert drop_upcycle.num_dropped(4, 0.5) == 2
  assert drop_upcycle.num_dropped(6, 0.3) == 1  # floor(1.8)
  assert drop_upcycle.num_dropped(100, 0.29) == 29  # 0.29·100 = 28.999…
  assert drop_upcycle.num_dropped(4, 1.0) == 4


def _layer(d=3, f=4, e=5, seed=0):
  rng = np.random.default_rng(seed)
  source = {'l/wi': rng.normal(size=(d, f)), 'l/wo': rng.normal(size=(f, d)),
            'embed': rng.normal(size=(7, d))}
  plan = {'l/wi': 'tile', 'l/wo': 'tile', 'embed': 'copy',
          'l/router_kernel': 'fresh'}
  new = {'l/wi': np.broadcast_to(source['l/wi'], (e, d, f)),
         'l/wo': np.broadcast_to(source['l/wo'], (e, f, d)),
         'embed': source['embed'], 'l/router_kernel': np.zeros((d, e))}
  return plan, source, new


def test_each_expert_redraws_the_same_hidden_units_in_every_weight():
  plan, source, new = _layer()
  assert drop_upcycle.apply(plan, source, new, 0.0, seed=0) is new
  out = drop_upcycle.apply(plan, source, new, 0.5, seed=0)
  np.testing.assert_array_equal(out['embed'], source['embed'])
  sets = []
  for e in range(5):
    wi_cols = np.flatnonzero(np.any(out['l/wi'][e] != source['l/wi'], 0))
    wo_rows = np.flatnonzero(np.any(out['l/wo'][e] != source['l/wo'], 1))
    assert len(wi_cols) == 2 and list(wi_cols) == list(wo_rows)
    # The hidden units kept are the dense model's, bit for bit.
    keep = np.setdiff1d(np.arange(4), wi_cols)
    np.testing.assert_array_equal(out['l/wi'][e][:, keep],
                                  source['l/wi'][:, keep])
    sets.append(tuple(wi_cols))
  assert len(set(sets)) > 1  # Experts renew different units.
  # The same seed gives the same experts; another seed others.
  again = drop_upcycle.apply(plan, source, new, 0.5, seed=0)
  np.testing.assert_array_equal(again['l/wi'], out['l/wi'])
  other = drop_upcycle.apply(plan, source, new, 0.5, seed=1)
  assert not np.array_equal(other['l/wi'], out['l/wi'])


def test_full_redraw_keeps_the_dense_statistics():
  plan, source, new = _layer(d=64, f=128, e=2)
  out = drop_upcycle.apply(plan, source, new, 1.0, seed=0)
  for name in ('l/wi', 'l/wo'):
    assert not np.any(out[name] == source[name])  # Nothing kept.
    for e in range(2):
      assert out[name][e].mean() == pytest.approx(source[name].mean(),
                                                  abs=0.02)
      assert out[name][e].std() == pytest.approx(source[name].std(),
                                                 rel=0.03)


def test_partial_redraw_has_the_replaced_entries_statistics():
  # r = 0.5 of F = 256 with D = 64: each expert's re-drawn columns of wi
  # (64 × 128 draws) have the mean and sample std of the dense entries they
  # replace; the kept columns are the dense ones, bit for bit.
  plan, source, new = _layer(d=64, f=256, e=3, seed=1)
  out = drop_upcycle.apply(plan, source, new, 0.5, seed=3)
  for e in range(3):
    fresh = np.any(out['l/wi'][e] != source['l/wi'], 0)
    assert fresh.sum() == 128
    dense, drawn = source['l/wi'][:, fresh], out['l/wi'][e][:, fresh]
    assert drawn.mean() == pytest.approx(dense.mean(), abs=0.05)
    assert drawn.std() == pytest.approx(dense.std(ddof=1), rel=0.03)
    np.testing.assert_array_equal(out['l/wi'][e][:, ~fresh],
                                  source['l/wi'][:, ~fresh])


class _Experts(nnx.Module):
  """An MoE FFN's expert weights (swiglu) under the trainer's names."""

  def __init__(self, e, d, f):
    self.wi = nnx.Param(jnp.zeros((e, d, f)))
    self.wi_gate = nnx.Param(jnp.zeros((e, d, f)))
    self.wo = nnx.Param(jnp.zeros((e, f, d)))


def test_init_from_applies_the_drop_to_every_expert_weight():
  # init_from.apply, as the trainer calls it, on placed arrays: wi_gate is
  # re-drawn at the same hidden units as wi and wo.
  e, d, f = 4, 8, 16
  rng = np.random.default_rng(0)
  source = {'ffn/wi': rng.normal(size=(d, f)),
            'ffn/wi_gate': rng.normal(size=(d, f)),
            'ffn/wo': rng.normal(size=(f, d))}
  source = {k: v.astype(np.float32) for k, v in source.items()}
  model = nnx.Module()
  model.ffn = _Experts(e, d, f)
  params = nnx.state(model, nnx.Param)
  target = init_from.flatten(nnx.to_pure_dict(params))
  plan = init_from.plan_init({k: v.shape for k, v in source.items()},
                             {k: v.shape for k, v in target.items()},
                             upcycle=True, name='dense')
  src = init_from.InitSource(None, 0, plan, source, drop_fraction=0.25,
                             seed=3)
  new = init_from.flatten(nnx.to_pure_dict(init_from.apply(src, params)))
  for i in range(e):
    changed = [np.flatnonzero(np.any(np.asarray(new[f'ffn/{n}'][i]) !=
                                     source[f'ffn/{n}'], axis))
               for n, axis in (('wi', 0), ('wi_gate', 0), ('wo', 1))]
    assert len(changed[0]) == f // 4  # floor(0.25 · F)
    assert all(list(c) == list(changed[0]) for c in changed)


def test_from_config_passes_the_fraction_and_seed(monkeypatch):
  config = testlib.tiny_config('configs/switch_top1.py', {
      'train.init_from': '/x', 'train.upcycle': True,
      'train.upcycle_drop_fraction': 0.5, 'seed': 7})
  monkeypatch.setattr(init_from, 'prepare', lambda *a: init_from.InitSource(
      None, 0, {}, {}))
  source = init_from.from_config(config, None)
  assert (source.drop_fraction, source.seed) == (0.5, 7)


@pytest.mark.parametrize('fraction, upcycle, match', [
    (-0.1, True, r'train.upcycle_drop_fraction=-0.1 must be in \[0, 1\]'),
    (1.5, True, r'train.upcycle_drop_fraction=1.5 must be in \[0, 1\]'),
    (float('nan'), True, r'train.upcycle_drop_fraction=nan must be in'),
    (0.5, False, 'upcycle_drop_fraction=0.5 re-draws part of each upcycled '
     'expert, but train.upcycle=False'),
])
def test_bad_fractions_are_one_line_errors(fraction, upcycle, match):
  config = testlib.tiny_config('configs/switch_top1.py', {
      'train.init_from': '/x', 'train.upcycle': upcycle,
      'train.upcycle_drop_fraction': fraction})
  with pytest.raises(UserInputError, match=match) as e:
    validate.check_train_config(config)
  assert '\n' not in str(e.value)
  config.train.upcycle_drop_fraction = 1.0 if upcycle else 0.0
  validate.check_train_config(config)  # The edge values are fine.
