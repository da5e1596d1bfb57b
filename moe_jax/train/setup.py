"""What a run is built from: its model config, data, mesh and initial state.

The trainer, the evaluator, the LoRA merge tool, the routing tracer and the
benchmarks all build a run this way, so a checkpoint restores onto exactly
the structure and shardings that saved it.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from moe_jax.core.config import MoEConfig
from moe_jax.data.pipeline import BatchIterator, eval_batches
from moe_jax.data.sources import load_corpus
from moe_jax.data.split import split_corpus
from moe_jax.data.tokens import check_token_ids
from moe_jax.errors import UserInputError
from moe_jax.models.config import ModelConfig
from moe_jax.models.transformer import TransformerLM
from moe_jax.parallel import mesh as mesh_lib
from moe_jax.parallel import placement
from moe_jax.parallel import rules as rules_lib
from moe_jax.train import optim
from moe_jax.train.step import TrainState


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  """The validated ModelConfig (with its MoEConfig) of an experiment."""
  return ModelConfig(max_len=config.seq_len, moe=MoEConfig(**config.moe),
                     **config.model)


def new_model(mcfg: ModelConfig, config) -> Callable[[], TransformerLM]:
  """() -> the run's freshly initialised model (seeded by config.seed)."""
  return lambda: TransformerLM(mcfg, rngs=nnx.Rngs(config.seed))


class Data(NamedTuple):
  """What a run reads: the corpus, its training batches and its evals."""
  corpus: Any  # The whole Corpus (its name and unit).
  batches: BatchIterator  # Training batches.
  val_batches: list  # Each evaluation during training.
  final_batches: list  # The final evaluation (all of the validation split).
  held_out: str  # What the validation split holds, in words.


def data_seed(config) -> int:
  """The seed of the batch order: data.seed, or the run's seed if unset."""
  return config.seed if config.data.seed is None else config.data.seed


def load_data(config) -> Data:
  """The corpus, its split, and the batches of the config's data section."""
  d = config.data
  corpus = load_corpus(d.kind, d.path, max_bytes=d.max_bytes,
                       num_domains=d.num_domains, seed=data_seed(config),
                       tokenizer=d.tokenizer, token_dtype=d.token_dtype)
  check_token_ids(corpus.tokens, config.model.vocab_size, corpus.name)
  train, val = split_corpus(corpus, d.val_fraction, d.split)
  batches = BatchIterator(train, config.batch_size, config.seq_len,
                          data_seed(config))
  # The old split scored its first eval_batches windows every time.
  spread = d.split != 'tail'
  val_batches = eval_batches(val, config.batch_size, config.seq_len,
                             config.train.eval_batches, spread)
  final = config.train.final_eval_batches
  final_batches = (val_batches if not spread else eval_batches(
      val, config.batch_size, config.seq_len, final))
  return Data(corpus, batches, val_batches, final_batches, val.held_out)


def make_mesh(config, mcfg: ModelConfig):
  """The config's mesh, checked against the model and batch before compiling."""
  mesh = mesh_lib.make_mesh(tuple(config.mesh.shape))
  tokens, group_size = config.batch_size * config.seq_len, mcfg.moe.group_size
  if group_size and tokens % group_size:
    # group_tokens would say so too, but only when the first step traces,
    # after the model summary.
    raise UserInputError(
        f'moe.group_size={group_size} does not divide the {tokens} tokens of '
        f'a batch (batch_size {config.batch_size} x seq_len '
        f'{config.seq_len}); set --config.moe.group_size to a divisor.')
  num_groups = tokens // group_size if group_size else None
  mesh_lib.check_fits(mesh, num_experts=mcfg.moe.num_experts,
                      batch_size=config.batch_size, num_heads=mcfg.num_heads,
                      d_ff=mcfg.d_ff, num_groups=num_groups,
                      num_kv_heads=mcfg.kv_heads,
                      fsdp_d_model=mcfg.d_model if config.mesh.fsdp else None)
  return mesh


def init_state(mcfg: ModelConfig, config, mesh, trained=None):
  """(graphdef, TrainState at step 0 placed on `mesh`, its shardings, tx).

  trained: params -> what the optimizer trains, inside the jitted init
    (LoRA's adapters: lora/run.py); default the params themselves.
  """
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  model_fn = new_model(mcfg, config)

  def init():
    model = model_fn()
    params = nnx.state(model, nnx.Param)
    if trained is not None:
      params = trained(params)
    return TrainState.create(model, step=jnp.zeros((), jnp.int32),
                             params=params, opt_state=tx.init(params),
                             rng=jax.random.PRNGKey(config.seed))

  graphdef = nnx.graphdef(nnx.eval_shape(model_fn))
  state, shardings = placement.init_sharded(init, mesh,
                                            rules_lib.for_config(config))
  return graphdef, state, shardings, tx
