"""YaRN rotary scaling (Peng et al. 2023, arXiv:2309.00071), model.rope_scaling:
a model trained at context L0 (original_max_len) runs at s·L0 (factor s).

Dims i = 0 .. Dh/2-1 of the rotary embedding turn at θ^(-2i/Dh) per position.
YaRN keeps the fast-turning dims (many turns within L0: they never saw a new
relative angle anyway) and divides the slow ones by s (position
interpolation), with a linear ramp between:

  turns(i)  = L0·θ^(-2i/Dh) / 2π, the turns dim i makes over L0;
  dim(b)    = Dh·ln(L0 / (2π·b)) / (2·ln θ), the dim that turns b times;
  ramp(i)   = clip((i - lo) / (hi - lo), 0, 1) with lo = dim(beta_fast),
              hi = dim(beta_slow) (floored and ceiled unless truncate is off,
              then clipped to [0, Dh-1]);
  inv_freq  = θ^(-2i/Dh) · (ramp(i)/s + 1 - ramp(i)).

The rotated q and k are also scaled by the attention factor
  a = m(s, mscale) / m(s, mscale_all_dim)   when both mscales are given,
      m(s, 1)                               otherwise,
with m(s, μ) = 0.1·μ·ln s + 1 (1 for s <= 1), so a rotated score q·k grows
by a². DeepSeek's latent attention (models/mla.py) further multiplies its
softmax scale by m(s, mscale_all_dim)²: with DeepSeek-V2/V3's released
configs (mscale = mscale_all_dim, so a = 1) that temperature scales every
score, the rotated and the unrotated part alike.

These are the formulas of transformers 5.23 (`_compute_yarn_parameters` in
modeling_rope_utils.py and `yarn_apply_mscale` in modeling_deepseek_v3.py),
checked against it by tests/test_models_yarn_hf_torch.py.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from moe_jax.errors import check_bool, check_positive, require
from moe_jax.models.section import resolve_section

_NUMBER = (int, float)


def _mscale(factor: float, mscale: float = 1.0) -> float:
  """m(s, μ): YaRN's attention temperature; 1 when nothing is stretched."""
  return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


@dataclasses.dataclass(frozen=True)
class YarnConfig:
  """model.rope_scaling (module docstring for the formulas).

  Attributes:
    factor: s >= 1, the context stretch. In a config file's
      model.rope_scaling section 0 turns YaRN off (the default).
    original_max_len: L0, the pretraining context.
    beta_fast, beta_slow: the turn counts that bound the ramp (defaults
      32 and 1, the paper's and transformers').
    mscale, mscale_all_dim: DeepSeek's temperature multipliers; 0: not
      given (the attention factor is then m(s, 1)).
    attention_factor: a, when a config states it; None: from s and mscales.
    truncate: round the ramp's bounds to whole dims (transformers'
      default; gpt-oss turns it off).
  """

  factor: float
  original_max_len: int
  beta_fast: float = 32.0
  beta_slow: float = 1.0
  mscale: float = 0.0
  mscale_all_dim: float = 0.0
  attention_factor: float | None = None
  truncate: bool = True

  def __post_init__(self):
    f = 'model.rope_scaling.'
    require(isinstance(self.factor, _NUMBER) and not isinstance(
        self.factor, bool) and 1 <= self.factor < math.inf, f + 'factor',
            self.factor, 'be a number >= 1 (the context stretch)',
            fix='or 0 in a config file for no scaling')
    check_positive(f + 'original_max_len', self.original_max_len,
                   fix='the context the model was pretrained at, e.g. 4096')
    for name in ('beta_fast', 'beta_slow'):
      check_positive(f + name, getattr(self, name), _NUMBER)
    for name in ('mscale', 'mscale_all_dim'):
      value = getattr(self, name)
      require(isinstance(value, _NUMBER) and not isinstance(value, bool)
              and value >= 0, f + name, value, 'be a number >= 0',
              fix='0 when the config does not give it')
    if self.attention_factor is not None:
      check_positive(f + 'attention_factor', self.attention_factor, _NUMBER,
                     fix='or None to derive it from factor and the mscales')
    check_bool(f + 'truncate', self.truncate)

  @property
  def rope_factor(self) -> float:
    """a, the scale of the rotated q and k."""
    if self.attention_factor is not None:
      return float(self.attention_factor)
    if self.mscale and self.mscale_all_dim:
      return _mscale(self.factor, self.mscale) / _mscale(
          self.factor, self.mscale_all_dim)
    return _mscale(self.factor)

  @property
  def mla_softmax_factor(self) -> float:
    """DeepSeek's extra softmax scale, m(s, mscale_all_dim)² (1 without)."""
    if not self.mscale_all_dim:
      return 1.0
    return _mscale(self.factor, self.mscale_all_dim) ** 2

  def inv_freq(self, dim: int, theta: float) -> np.ndarray:
    """float64 [dim/2]: the scaled angle per position of each rotary dim."""
    base = theta ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)

    def dim_of(turns):  # The (fractional) dim that turns `turns` times.
      return dim * math.log(self.original_max_len / (turns * 2 * math.pi)) / (
          2 * math.log(theta))

    lo, hi = dim_of(self.beta_fast), dim_of(self.beta_slow)
    if self.truncate:
      lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    if lo == hi:  # As transformers: a step, not a division by zero.
      hi += 0.001
    ramp = np.clip((np.arange(dim // 2) - lo) / (hi - lo), 0.0, 1.0)
    return base * (ramp / self.factor + 1.0 - ramp)


def off_section() -> dict[str, Any]:
  """A config file's model.rope_scaling section: YarnConfig's fields, off."""
  return dict(factor=0.0, original_max_len=0, beta_fast=32.0, beta_slow=1.0,
              mscale=0.0, mscale_all_dim=0.0, attention_factor=None,
              truncate=True)


def resolve(value: Any) -> YarnConfig | None:
  """model.rope_scaling as given (None, a YarnConfig, or a mapping such as a
  config file's section, off while its factor is 0 or absent) -> None or a
  YarnConfig."""
  return resolve_section(value, YarnConfig, name='model.rope_scaling',
                         article='a', off=off_section(), switch='factor',
                         off_words='no scaling', example='40')
