"""Drop-Upcycling: upcycle, then re-initialise part of each expert.

Nakamura et al. 2025 ("Drop-Upcycling: Training Sparse Mixture of Experts
with Partial Re-initialization", ICLR 2025, arXiv:2502.19261): after each
dense FFN is copied into every expert (sparse upcycling), each expert
re-draws a random fraction r of its intermediate dimension F from a normal
distribution with the statistics of the weights it replaces, so that the
experts start different and specialise, while keeping most of what the
dense model learned. r = 0 is naive upcycling; r = 1 keeps nothing of the
dense FFN but its weight statistics.

What is re-drawn, per MoE layer and per expert e, as the paper's method
(Sec. 3, "diversity re-initialization") describes it: one index set S_e
serves every weight of the expert, the same indicator of S_e masking wi
(and wi_gate) and wo, so that whole hidden units are renewed:
  * n = floor(r·F) indices of the intermediate dimension, drawn without
    replacement;
  * at those indices, the columns of wi (and wi_gate) [D, F] and the rows of
    wo [F, D] get fresh values from N(μ, σ²), with μ and σ (ddof = 1, as
    torch's .std()) of the dense weight's entries at those same indices.

The authors' conversion script (github Taishi-N324/Drop-Upcycling,
conversions/drop_upcycling.py at commit 481747d, read 2026-12-06) differs
in two ways, and we follow the paper in both:
  * shuffle_and_partially_initialize, called once per weight, draws its own
    init_indices = randperm(F)[:int(F·r)], so gate_proj, up_proj and
    down_proj each renew a different set: a hidden unit may get a fresh
    gate row and keep its dense down column. With one set, a unit is
    either the dense model's or new (tests/test_drop_upcycle.py checks
    that the renewed columns of wi are the renewed rows of wo);
  * before that, every weight of an expert is permuted along F by one
    permutation per expert (index_select with perm[:F]). A permutation
    shared by the three weights only relabels hidden units and computes the
    same function, so leaving it out changes nothing but the labels.
The statistics agree: both take μ and the unbiased σ over the dense entries
being replaced (the script's init_part.mean() and .std()).

The draws come from numpy seeded by the run's seed, so every process of a
multi-host run computes the same experts.
"""

from __future__ import annotations

import math

import numpy as np

# The axis of the intermediate dimension F in each dense FFN weight.
FF_AXIS = {'wi': 1, 'wi_gate': 1, 'wo': 0}
# Keeps these draws apart from any other numpy stream seeded by the run seed.
_STREAM = 0xD80B


def num_dropped(d_ff: int, fraction: float) -> int:
  """n = floor(r·F), the intermediate indices each expert re-draws."""
  return int(math.floor(fraction * d_ff + 1e-9))


def redraw(dense: np.ndarray, expert: np.ndarray, indices: np.ndarray,
           axis: int, rng) -> np.ndarray:
  """One expert's weight with its `indices` along `axis` re-drawn.

  Args:
    dense: the dense FFN weight the expert was copied from, [D, F] or [F, D].
    expert: the expert's copy (same shape); not modified.
    indices: int [n] positions along `axis` (the intermediate dimension).
    axis: FF_AXIS of the weight.
    rng: has .normal(loc, scale, size) (a numpy Generator).

  Returns:
    A copy of `expert` whose slices at `indices` are N(μ, σ²) draws, μ and σ
    those of dense's entries at the same indices.
  """
  out = np.array(expert, copy=True)
  if len(indices) == 0:
    return out
  part = np.take(dense, indices, axis=axis).astype(np.float64)
  std = float(part.std(ddof=1)) if part.size > 1 else 0.0
  fresh = rng.normal(float(part.mean()), std, part.shape)
  index = [slice(None)] * dense.ndim
  index[axis] = indices
  out[tuple(index)] = fresh.astype(out.dtype)
  return out


def apply(plan: dict[str, str], source: dict[str, np.ndarray],
          new: dict[str, np.ndarray], fraction: float,
          seed: int) -> dict[str, np.ndarray]:
  """`new` (init_from.apply_plan's output) with each tiled layer's experts
  partly re-drawn from `source`'s dense weights; r = 0 returns it as is.

  Layers are visited in sorted path order and experts in order, so the
  result depends only on (fraction, seed) and the shapes.
  """
  if fraction <= 0:
    return new
  rng = np.random.default_rng((int(seed), _STREAM))
  layers = sorted({p.rsplit('/', 1)[0] for p, how in plan.items()
                   if how == 'tile'})
  out = dict(new)
  for layer in layers:
    names = [n for n in FF_AXIS if plan.get(f'{layer}/{n}') == 'tile']
    first = source[f'{layer}/{names[0]}']
    d_ff = first.shape[FF_AXIS[names[0]]]
    num_experts = new[f'{layer}/{names[0]}'].shape[0]
    n = num_dropped(d_ff, fraction)
    stacked = {name: np.array(new[f'{layer}/{name}'], copy=True)
               for name in names}
    for e in range(num_experts):
      indices = np.sort(rng.permutation(d_ff)[:n])
      for name in names:
        stacked[name][e] = redraw(source[f'{layer}/{name}'],
                                  stacked[name][e], indices, FF_AXIS[name],
                                  rng)
    out.update({f'{layer}/{name}': w for name, w in stacked.items()})
  return out
