"""What each expert receives: load, token classes, and mutual information.

Every function reads a RoutingTrace (moe_jax.analysis.trace) and returns
plain NumPy arrays, so results can be printed, tested or plotted. Shape
letters: M MoE layers, N tokens, K choices, E experts.

Load here is what the router asked for (every routed choice, kept or
dropped): the imbalance the balancing loss and capacity have to absorb.
Only routed (token, expert) pairs count (trace.routed): an expert a ReLU or
expert-choice router did not pick is no load, and a null-expert choice is
no load on a real expert (null_fraction measures those). The rank-based
functions leave out the tokens whose choice at that rank was not routed.
"""

from __future__ import annotations

import numpy as np

from moe_jax.analysis.trace import RoutingTrace

# Byte classes for the expert × token-class heatmap. Bytes >= 128 are parts
# of multi-byte UTF-8 characters; they and control bytes are 'other'.
BYTE_CLASSES = ('letter', 'digit', 'whitespace', 'bracket', 'punctuation',
                'other')
_BRACKETS = b'()[]{}<>'


def _byte_class_table() -> np.ndarray:
  table = np.full(256, BYTE_CLASSES.index('other'), np.int32)
  for b in range(128):
    c = chr(b)
    if c.isalpha():
      table[b] = BYTE_CLASSES.index('letter')
    elif c.isdigit():
      table[b] = BYTE_CLASSES.index('digit')
    elif c in ' \t\n\r\x0b\x0c':
      table[b] = BYTE_CLASSES.index('whitespace')
    elif b in _BRACKETS:
      table[b] = BYTE_CLASSES.index('bracket')
    elif c.isprintable():
      table[b] = BYTE_CLASSES.index('punctuation')
  return table


_BYTE_CLASS = _byte_class_table()


def byte_class(tokens: np.ndarray) -> np.ndarray:
  """int32 like tokens: the index in BYTE_CLASSES of each byte."""
  return _BYTE_CLASS[np.asarray(tokens)]


def expert_load(trace: RoutingTrace,
                ranks: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
  """Per-layer expert load and its imbalance.

  Args:
    trace: the routing trace.
    ranks: which k-ranks count (default all K choices).

  Returns:
    load: float [M, E] share of the counted (routed) choices per real
      expert (rows sum to 1 where anything was routed).
    max_violation: float [M], MaxVio = max_e load_e / mean_e load_e - 1
      (Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing Strategy for
      Mixture-of-Experts"):
      0 when balanced, E - 1 when every choice goes to one expert.
    cv: float [M], coefficient of variation std_e / mean_e of the load, the
      imbalance Shazeer et al. (2017) report (their Table 6).
  """
  cols = slice(None) if ranks is None else list(ranks)
  expert, routed = trace.expert[..., cols], trace.routed[..., cols]
  e = trace.num_experts
  counts = np.stack([np.bincount(x[r], minlength=e)
                     for x, r in zip(expert, routed)]).astype(np.float64)
  load = counts / np.maximum(counts.sum(-1, keepdims=True), 1)
  mean = load.mean(-1)
  return {'load': load,
          'max_violation': load.max(-1) / mean - 1.0,
          'cv': load.std(-1) / mean}


def null_fraction(trace: RoutingTrace) -> np.ndarray:
  """float [M]: the share of choices that went to a null expert (the logged
  'null_fraction' of moe.num_null_experts; 0 without null experts)."""
  return np.mean(trace.expert >= trace.num_experts, axis=(1, 2))


def expert_label_counts(trace: RoutingTrace, labels: np.ndarray,
                        num_labels: int, rank: int = 0) -> np.ndarray:
  """int [M, E, num_labels]: tokens of each label routed to each expert.

  Args:
    trace: the routing trace.
    labels: int [N] a class per token (e.g. byte_class(trace.tokens) or
      trace.domain); negative labels are left out.
    num_labels: the number of classes.
    rank: the k-rank whose expert counts (0: the first choice).
  """
  labels = np.asarray(labels)
  e = trace.num_experts
  out = np.zeros((trace.num_layers, e, num_labels), np.int64)
  for m in range(trace.num_layers):
    keep = (labels >= 0) & trace.routed[m, :, rank]
    flat = trace.expert[m, keep, rank] * num_labels + labels[keep]
    out[m] = np.bincount(flat, minlength=e * num_labels).reshape(
        e, num_labels)
  return out


def top_tokens(trace: RoutingTrace, layer: int, n: int = 10,
               rank: int = 0) -> dict[str, np.ndarray]:
  """The most frequent tokens of each expert in MoE layer `layer` (0..M-1).

  Returns:
    tokens: int [E, n] token ids, most frequent first (-1 pads experts that
      saw fewer than n distinct tokens).
    counts: int [E, n] how often the expert got each.
    share: float [E, n] the fraction of the token's routed occurrences (at
      this rank) that went to this expert: near 1 means the expert owns the
      token, near 1/E means the token is spread evenly (so a frequent token
      is not necessarily a specialised one).
  """
  e = trace.num_experts
  vocab = int(max(trace.tokens.max() + 1, 256))
  keep = trace.routed[layer, :, rank]
  joint = np.bincount(trace.expert[layer, keep, rank] * vocab +
                      trace.tokens[keep],
                      minlength=e * vocab).reshape(e, vocab)
  per_token = np.maximum(joint.sum(0), 1)
  order = np.argsort(-joint, axis=1, kind='stable')[:, :n]
  counts = np.take_along_axis(joint, order, axis=1)
  tokens = np.where(counts > 0, order, -1)
  share = np.where(counts > 0, counts / per_token[order], 0.0)
  return {'tokens': tokens, 'counts': counts, 'share': share}


def entropy(counts: np.ndarray) -> float:
  """Entropy in nats of the distribution proportional to `counts`."""
  p = np.asarray(counts, np.float64).reshape(-1)
  p = p[p > 0] / p.sum()
  return float(-(p * np.log(p)).sum())


def mutual_information(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
  """Plug-in mutual information of two discrete label arrays, in nats.

  Returns:
    mi: I(a; b) = H(a) + H(b) - H(a, b).
    h_a, h_b: the entropies.
    nmi: mi / min(H(a), H(b)), in [0, 1]: 1 when one label determines the
      other (e.g. each domain has its own expert), 0 when independent. The
      min makes the expert↔token-id value reach 1 when the expert is a
      function of the token, although H(token) > log E.
  """
  if np.size(a) == 0:  # E.g. a layer that routed no token at this rank.
    return {'mi': 0.0, 'h_a': 0.0, 'h_b': 0.0, 'nmi': 0.0}
  a = np.unique(np.asarray(a), return_inverse=True)[1].reshape(-1)
  b = np.unique(np.asarray(b), return_inverse=True)[1].reshape(-1)
  joint = np.bincount(a * (b.max() + 1) + b,
                      minlength=(a.max() + 1) * (b.max() + 1))
  h_a, h_b = entropy(np.bincount(a)), entropy(np.bincount(b))
  mi = max(h_a + h_b - entropy(joint), 0.0)
  low = min(h_a, h_b)
  return {'mi': mi, 'h_a': h_a, 'h_b': h_b,
          'nmi': mi / low if low > 0 else 0.0}


def expert_label_mi(trace: RoutingTrace, labels: np.ndarray, rank: int = 0,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """Mutual information between expert choice and a token label, per layer.

  The plug-in estimate is biased upwards by about (E-1)(V-1)/(2N) nats for V
  label values, which matters for token ids (V = 256); 'nmi_shuffled', the
  same statistic with the labels randomly permuted, is that floor. Compare
  against it, not against 0.

  Args:
    trace: the routing trace.
    labels: int [N] (e.g. trace.domain or trace.tokens); negative labels
      are left out.
    rank: the k-rank whose expert counts.
    seed: the permutation of the shuffled baseline.

  Returns:
    mi, h_expert, h_label, nmi, mi_shuffled, nmi_shuffled: float [M] (see
    mutual_information; mi in nats).
  """
  labels = np.asarray(labels)
  rows = []
  for m in range(trace.num_layers):
    keep = (labels >= 0) & trace.routed[m, :, rank]
    shuffled = np.random.default_rng(seed).permutation(labels[keep])
    expert = trace.expert[m, keep, rank]
    r = mutual_information(expert, labels[keep])
    floor = mutual_information(expert, shuffled)
    rows.append((r['mi'], r['h_a'], r['h_b'], r['nmi'], floor['mi'],
                 floor['nmi']))
  cols = np.asarray(rows, np.float64).reshape(-1, 6).T
  return dict(zip(('mi', 'h_expert', 'h_label', 'nmi', 'mi_shuffled',
                   'nmi_shuffled'), cols))
