"""Corpora (bytes or token ids), train/val splits and deterministic batches."""

from moe_jax.data.pipeline import BatchIterator
from moe_jax.data.pipeline import eval_batches
from moe_jax.data.corpus import Corpus
from moe_jax.data.corpus import VOCAB_SIZE
from moe_jax.data.shakespeare import tinyshakespeare
from moe_jax.data.sources import CORPUS_KINDS
from moe_jax.data.sources import load_corpus
from moe_jax.data.sources import stdlib_corpus
from moe_jax.data.synthetic import synthetic_mixture
from moe_jax.data.text_files import read_text_path
from moe_jax.data.split import split_corpus
from moe_jax.data.tokens import check_token_ids
from moe_jax.data.tokens import read_token_file
