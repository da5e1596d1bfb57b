"""The perplexity of a Hugging Face model folder on a text file, dropless and
at chosen eval capacity factors: the capacity counterfactual on real weights.

  python -m moe_jax.evaluate --hf path/to/folder --data text.txt --eval_capacity_factor 1.0,1.25

The text is encoded with the folder's own tokenizer.json (no special
tokens) and cut into non-overlapping windows of seq_len + 1 tokens; each
window scores its seq_len next-token predictions from its own start, so the
first tokens of a window see little context (perplexity with stride seq_len).
The weights are imported once; each setting rebuilds the model around them:
'dropless' (as imported: no token dropped, the model as trained), then the
'index' dispatcher with moe.eval_capacity_factor = cf, whose groups are the
windows: C = max(ceil(K·seq_len·cf / E), moe.min_capacity) slots per expert
(min_capacity 4 unless the import sets it; docs/core.md).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moe_jax.convert import hf_moe
from moe_jax.data.tokenize import encode, load_tokenizer
from moe_jax.errors import UserInputError, check_positive, require
from moe_jax.generation.load import hf_folder
from moe_jax.models.transformer import TransformerLM
from moe_jax.train.step import eval_step


SEQ_LEN, BATCH_SIZE = 256, 8  # The command line's defaults.


@dataclasses.dataclass(frozen=True)
class Score:
  """One setting's result over the whole text."""
  setting: str  # 'dropless' or 'capacity factor <cf>'.
  loss: float  # Mean next-token cross-entropy, nats per token.
  dropped_fraction: float  # Of the expert choices, mean over MoE layers.
  tokens: int  # Predictions scored.

  @property
  def perplexity(self) -> float:
    return math.exp(self.loss)

  def line(self) -> str:
    return (f'{self.setting}: loss {self.loss:.4f} nats/token, perplexity '
            f'{self.perplexity:.4g}, dropped {self.dropped_fraction:.4f} of '
            f'expert choices ({self.tokens} tokens)')


def windows(ids: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, targets) int32 [N, seq_len]: non-overlapping windows; a rest
  shorter than seq_len + 1 tokens is left out (all of it when the text is
  shorter than one window: then one window of the whole text)."""
  seq_len = min(seq_len, len(ids) - 1)
  n = (len(ids) - 1) // seq_len
  ids = np.asarray(ids[:n * seq_len + 1], np.int32)
  return (ids[:-1].reshape(n, seq_len),
          ids[1:].reshape(n, seq_len))


def score_folder(folder: str, data: str, capacity_factors: Sequence[float],
                 *, seq_len: int = SEQ_LEN, batch_size: int = BATCH_SIZE,
                 max_tokens: int | None = None) -> list[Score]:
  """Scores dropless, then at each capacity factor (module docstring).

  Args:
    folder: a Hugging Face model folder with its tokenizer.json.
    data: a UTF-8 text file.
    capacity_factors: eval capacity factors (each > 0).
    seq_len: tokens per window; at most config.json's
      max_position_embeddings.
    batch_size: windows per forward pass.
    max_tokens: score only the text's first this many tokens.
  """
  folder_path, data_path = hf_folder(folder, 'the text'), pathlib.Path(data)
  if not data_path.is_file():
    raise UserInputError(f"no text file at '{data}'; pass --data a UTF-8 "
                         'text file')
  for cf in capacity_factors:
    check_positive('--eval_capacity_factor', cf, (int, float))
  check_positive('--seq_len', seq_len)
  check_positive('--batch_size', batch_size)
  if max_tokens is not None:
    check_positive('--max_tokens', max_tokens, fix='or leave it out')
  tokenizer = load_tokenizer(folder_path)
  config, params = hf_moe.import_checkpoint(folder_path)
  have = tokenizer.get_vocab_size()
  require(have <= config.vocab_size, 'the tokenizer.json vocabulary', have,
          f"fit in the model's vocab_size={config.vocab_size}",
          fix="the folder's tokenizer is not this model's; use its own")
  require(seq_len <= config.max_len, '--seq_len', seq_len,
          f'be at most max_position_embeddings={config.max_len}')
  ids = encode(tokenizer, data_path.read_text('utf-8', errors='replace'))
  ids = ids[:max_tokens] if max_tokens else ids
  if len(ids) < 2:
    raise UserInputError(f"'{data}' encodes to {len(ids)} token(s); a "
                         'perplexity needs at least 2')
  inputs, targets = windows(ids, seq_len)
  params = jax.tree.map(jnp.asarray, params)  # On device once, for all.
  settings = [('dropless', {})] + [
      (f'capacity factor {cf:g}',
       dict(dispatcher='index', eval_capacity_factor=float(cf)))
      for cf in capacity_factors]
  return [_score(config, params, overrides, name, inputs, targets,
                 batch_size) for name, overrides in settings]


def _score(config, params, overrides, name, inputs, targets, batch_size):
  config = dataclasses.replace(
      config, moe=dataclasses.replace(config.moe, **overrides))
  model = nnx.eval_shape(lambda: TransformerLM(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  nnx.replace_by_pure_dict(state, params)
  graphdef, weights, rest = nnx.split(nnx.merge(graphdef, state), nnx.Param,
                                      ...)
  step = jax.jit(functools.partial(eval_step, graphdef=graphdef))
  ce = count = dropped = 0.0
  for i in range(0, len(inputs), batch_size):
    batch = {'inputs': inputs[i:i + batch_size],
             'targets': targets[i:i + batch_size]}
    sums = jax.device_get(step(weights, batch, {'rest': rest}))
    ce += float(sums['ce_sum'])
    count += float(sums['count'])
    # Weighted by the batch's tokens: the last batch may be smaller.
    dropped += float(sums['dropped_fraction']) * float(sums['count'])
  return Score(name, ce / count, dropped / count, int(count))
