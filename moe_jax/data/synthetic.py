"""Synthetic byte languages with known domains, for routing studies."""

import numpy as np

from moe_jax.errors import UserInputError


def _domain_language(rng: np.random.Generator, max_alphabet: int):
  """One synthetic 'language': an alphabet and a sparse Markov chain.

  Returns:
    symbols: uint8 [K+1], byte of each state; the last state is the space.
    cdf: float64 [K+1, K+1] cumulative transition probabilities.
    start_cdf: float64 [K+1] cumulative distribution of word-initial states.
  """
  printable = np.arange(33, 127)  # Visible ASCII; the space is reserved.
  k = int(rng.integers(max_alphabet // 2, max_alphabet + 1))
  letters = rng.choice(printable, size=k, replace=False)
  symbols = np.append(letters, ord(' ')).astype(np.uint8)
  mean_word_len = rng.uniform(2.5, 8.0)
  trans = np.zeros((k + 1, k + 1))
  for i in range(k):
    # A handful of successors per letter makes the chain sparse, so bigram
    # statistics (not just the alphabet) identify the domain.
    succ = rng.choice(k, size=int(rng.integers(2, 5)), replace=False)
    trans[i, succ] = rng.dirichlet(np.full(len(succ), 0.5))
    trans[i] *= 1.0 - 1.0 / mean_word_len
    trans[i, k] = 1.0 / mean_word_len
  start = rng.dirichlet(np.full(k, 0.3))
  trans[k, :k] = start  # After a space a new word starts; never two spaces.
  cdf, start_cdf = np.cumsum(trans, axis=1), np.cumsum(start)
  # Rounding can leave a row's total just under 1, and a uniform draw above
  # it would then select a padding state in synthetic_mixture.
  cdf[:, -1] = start_cdf[-1] = 1.0
  return symbols, cdf, start_cdf


def synthetic_mixture(num_bytes: int,
                      num_domains: int = 4,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """A synthetic multi-domain corpus for routing studies.

  Each domain is a generated language with its own alphabet (a subset of
  visible ASCII), its own sparse first-order Markov chain over it, and its own
  mean word length. The corpus is a sequence of documents of 200-600 bytes,
  each from one randomly chosen domain and ending in b'\\n'.

  Args:
    num_bytes: N, the corpus length.
    num_domains: number of languages.
    seed: everything is a deterministic function of the seed.

  Returns:
    tokens: uint8 [N].
    domains: int32 [N], the domain of the document each byte belongs to.
  """
  if num_bytes <= 0 or num_domains <= 0:
    raise UserInputError(
        f'synthetic corpus needs num_bytes > 0 and num_domains > 0, got '
        f'{num_bytes} and {num_domains}; pass positive values')
  rng = np.random.default_rng([seed, num_domains])
  langs = [_domain_language(rng, 24) for _ in range(num_domains)]
  num_docs = num_bytes // 200 + 1
  doc_domain = rng.integers(0, num_domains, size=num_docs)
  doc_len = rng.integers(200, 601, size=num_docs)
  max_len = int(doc_len.max())
  # All documents advance their chains in lockstep: max_len vectorised steps
  # instead of a Python loop over every byte.
  width = max(len(s) for s, _, _ in langs)
  cdf = np.ones((num_domains, width, width))
  start_cdf = np.ones((num_domains, width))
  symbols = np.zeros((num_domains, width), np.uint8)
  for d, (sym, c, s) in enumerate(langs):
    n = len(sym)
    cdf[d, :n, :n], start_cdf[d, :n - 1], symbols[d, :n] = c, s, sym
  u = rng.random((max_len, num_docs))
  state = np.argmax(start_cdf[doc_domain] > u[0][:, None], axis=1)
  states = np.empty((num_docs, max_len), np.int64)
  states[:, 0] = state
  for t in range(1, max_len):
    state = np.argmax(cdf[doc_domain, state] > u[t][:, None], axis=1)
    states[:, t] = state
  text = symbols[doc_domain[:, None], states]
  mask = np.arange(max_len)[None, :] < doc_len[:, None]
  text[np.arange(num_docs), doc_len - 1] = ord('\n')
  tokens = text[mask][:num_bytes]
  domains = np.broadcast_to(doc_domain[:, None], text.shape)[mask]
  return tokens.astype(np.uint8), domains[:num_bytes].astype(np.int32)
