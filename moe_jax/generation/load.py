"""A model to generate with, and its text codec: from a training workdir's
latest checkpoint or from a Hugging Face model folder."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
from flax import nnx

from moe_jax.errors import UserInputError


class ByteCodec:
  """Text <-> UTF-8 byte ids, the byte-level models' vocabulary."""

  def encode(self, text: str) -> list[int]:
    return list(text.encode('utf-8'))

  def decode(self, ids) -> str:
    # A sample can stop inside a multi-byte character: shown as U+FFFD.
    return bytes(int(i) for i in ids).decode('utf-8', errors='replace')


@dataclasses.dataclass
class TokenizerCodec:
  """Text <-> ids with a `tokenizers.Tokenizer` (a tokenizer.json).

  special: add the tokenizer's special tokens (e.g. BOS) to a prompt, as a
  Hugging Face model expects; a run trained on data.tokenizer saw none.
  """

  tokenizer: Any
  special: bool

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=self.special).ids

  def decode(self, ids) -> str:
    return self.tokenizer.decode([int(i) for i in ids],
                                 skip_special_tokens=True)


@dataclasses.dataclass
class Loaded:
  """A model ready to generate, its codec and its end-of-text id (or None)."""
  model: Any
  codec: Any
  stop_token: int | None = None


def from_workdir(workdir: str) -> Loaded:
  """The latest checkpoint of a training run (LoRA adapters folded in,
  loss-free biases included) on one device, with the run's tokenizer."""
  # Imported here: the training stack is heavy and --hf does not need it.
  from moe_jax.train import saved_run  # pylint: disable=g-import-not-at-top
  from moe_jax.train.evaluate import restore_checkpoint  # pylint: disable=g-import-not-at-top
  from moe_jax.data.tokenize import load_tokenizer  # pylint: disable=g-import-not-at-top

  _, config = saved_run.latest_config(workdir)
  if config.data.tokenizer:
    codec = TokenizerCodec(load_tokenizer(config.data.tokenizer), False)
  elif config.data.kind == 'tokens':
    raise UserInputError(
        f'{workdir} was trained on token ids ({config.data.path}) without a '
        'tokenizer, so a text prompt cannot be encoded for it; sample a run '
        'trained on text or with data.tokenizer')
  else:
    codec = ByteCodec()
  r = restore_checkpoint(config, workdir, load_data=False)
  # Generation runs on one device, whatever mesh the run trained on.
  states = jax.device_put((r.params, *r.state.router_states().values()),
                          jax.devices()[0])
  return Loaded(nnx.merge(r.graphdef, *states), codec)


def hf_folder(folder: str, encoded: str) -> pathlib.Path:
  """The path of a model folder --hf names that holds a tokenizer.json,
  or a one-line error; `encoded` says what the tokenizer is for."""
  path = pathlib.Path(folder).expanduser()
  if not path.is_dir():
    raise UserInputError(f"no folder at '{folder}'; pass --hf a Hugging Face "
                         'model folder (config.json, *.safetensors, '
                         'tokenizer.json)')
  if not (path / 'tokenizer.json').is_file():
    raise UserInputError(f"'{folder}' has no tokenizer.json, so {encoded} "
                         "cannot be encoded; add the model's tokenizer.json "
                         'to the folder')
  return path


def from_hf(folder: str) -> Loaded:
  """A Mixtral / Qwen2-MoE folder (moe_jax.convert.hf_moe) with its
  tokenizer.json, stopping at config.json's eos_token_id."""
  from moe_jax.convert import hf_moe  # pylint: disable=g-import-not-at-top
  from moe_jax.data.tokenize import load_tokenizer  # pylint: disable=g-import-not-at-top

  path = hf_folder(folder, 'the prompt')
  codec = TokenizerCodec(load_tokenizer(path), True)
  model = hf_moe.load_model(path)
  eos = json.loads((path / 'config.json').read_text()).get('eos_token_id')
  if isinstance(eos, list):  # Several end ids: the first is the usual one.
    eos = eos[0] if eos else None
  return Loaded(model, codec, eos if isinstance(eos, int) else None)
