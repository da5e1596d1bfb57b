"""Matplotlib figures of routing traces and capacity curves.

Each function computes what it draws from the analysis functions (so a plot
and a printed number never disagree) and returns the Figure; nothing is
shown or saved here. Traces are passed as {name: RoutingTrace} so several
models (top-1 vs top-2) land side by side on one figure.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from moe_jax.analysis import drops, dynamics, routing
from moe_jax.analysis.trace import RoutingTrace


def _grid(rows: int, cols: int, size=(3.2, 2.6), **kw):
  fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows),
                           squeeze=False, **kw)
  return fig, axes


def _layer_name(trace: RoutingTrace, m: int) -> str:
  return f'block {int(trace.layers[m])}'


def expert_load(traces: Mapping[str, RoutingTrace]) -> Figure:
  """Bars of each expert's share of choices, one row per model, one column
  per MoE layer; the dashed line is the balanced share 1/E."""
  cols = max(t.num_layers for t in traces.values())
  fig, axes = _grid(len(traces), cols)
  for row, (name, t) in enumerate(traces.items()):
    r = routing.expert_load(t)
    for m in range(t.num_layers):
      ax = axes[row, m]
      ax.bar(np.arange(t.num_experts), r['load'][m], color='tab:blue')
      ax.axhline(1 / t.num_experts, ls='--', c='k', lw=1)
      ax.set_title(f'{name}, {_layer_name(t, m)}\nMaxVio {r["max_violation"][m]:.2f}'
                   f', CV {r["cv"][m]:.2f}', fontsize=9)
      ax.set_xlabel('expert')
    axes[row, 0].set_ylabel('share of choices')
  fig.tight_layout()
  return fig


def specialisation(trace: RoutingTrace, labels: np.ndarray,
                   label_names: Sequence[str], *, title: str = '') -> Figure:
  """P(expert | label) per MoE layer as a heatmap (first choices).

  Each column is one label's distribution over experts, so a column with
  one dark cell is a label owned by one expert, and identical columns mean
  the router ignores the label.
  """
  counts = routing.expert_label_counts(trace, labels, len(label_names))
  fig, axes = _grid(1, trace.num_layers, size=(0.55 * len(label_names) + 1.8,
                                                3.0))
  for m in range(trace.num_layers):
    ax = axes[0, m]
    p = counts[m] / np.maximum(counts[m].sum(0, keepdims=True), 1)
    im = ax.imshow(p, vmin=0, vmax=1, cmap='viridis', aspect='auto')
    ax.set_xticks(range(len(label_names)), label_names, rotation=60,
                  ha='right', fontsize=8)
    ax.set_yticks(range(trace.num_experts))
    ax.set_ylabel('expert')
    ax.set_title(f'{title} {_layer_name(trace, m)}'.strip(), fontsize=9)
  fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label='P(expert | label)')
  return fig


def mutual_information(results: Mapping[str, Mapping[str, dict]]) -> Figure:
  """Normalised MI per layer, observed (bars) against the shuffled floor
  (black ticks). `results[model][label_kind]` is an expert_label_mi result."""
  kinds = list(next(iter(results.values())))
  fig, axes = _grid(1, len(kinds), size=(4.0, 3.0))
  for col, kind in enumerate(kinds):
    ax = axes[0, col]
    width = 0.8 / len(results)
    for j, (name, by_kind) in enumerate(results.items()):
      r = by_kind[kind]
      x = np.arange(len(r['nmi'])) + j * width
      ax.bar(x, r['nmi'], width, label=name)
      ax.scatter(x, r['nmi_shuffled'], marker='_', c='k', s=200, zorder=3)
    ax.set_xlabel('MoE layer')
    ax.set_title(f'NMI(expert, {kind})', fontsize=10)
    ax.set_ylim(0, max(0.05, ax.get_ylim()[1]))
  axes[0, 0].legend(fontsize=8)
  fig.tight_layout()
  return fig


def transitions(trace: RoutingTrace, *, title: str = '') -> Figure:
  """P(first choice in MoE layer m+1 | first choice in layer m)."""
  counts = dynamics.transition_counts(trace)
  fig, axes = _grid(1, max(len(counts), 1), size=(3.4, 3.0))
  for m, c in enumerate(counts):
    ax = axes[0, m]
    ax.imshow(c / np.maximum(c.sum(1, keepdims=True), 1), vmin=0, vmax=1,
              cmap='magma')
    ax.set_xlabel(f'expert in {_layer_name(trace, m + 1)}')
    ax.set_ylabel(f'expert in {_layer_name(trace, m)}')
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  return fig


def reuse(traces: Mapping[str, RoutingTrace]) -> Figure:
  """Consecutive-token expert reuse against chance (Mixtral paper, Sec. 5):
  bars are observed rates, black ticks the chance rate given each layer's
  load, dashed lines the uniform-router chance."""
  modes = ('first', 'any')
  fig, axes = _grid(1, 2, size=(4.2, 3.0))
  for col, mode in enumerate(modes):
    ax = axes[0, col]
    width = 0.8 / len(traces)
    for j, (name, t) in enumerate(traces.items()):
      r = dynamics.reuse_rate(t, mode)
      x = np.arange(t.num_layers) + j * width
      bars = ax.bar(x, r['rate'], width, label=name)
      ax.scatter(x, r['chance'], marker='_', c='k', s=200, zorder=3)
      ax.axhline(r['uniform'], ls='--', lw=1, c=bars[0].get_facecolor())
    ax.set_xlabel('MoE layer')
    ax.set_title('same first choice' if mode == 'first'
                 else 'any shared expert', fontsize=10)
  axes[0, 0].set_ylabel('rate over neighbour pairs')
  axes[0, 0].legend(fontsize=8)
  fig.tight_layout()
  return fig


def capacity_curves(curves: Mapping[str, dict]) -> Figure:
  """Eval loss and dropped fraction against the eval capacity factor; the
  dashed lines are each run's dropless loss, the dotted line its train cf."""
  fig, axes = _grid(1, 2, size=(4.4, 3.2))
  for name, c in curves.items():
    line, = axes[0, 0].plot(c['factors'], c['loss'], 'o-', label=name)
    if np.isfinite(c['dropless_loss']):
      axes[0, 0].axhline(c['dropless_loss'], ls='--', c=line.get_color(),
                         lw=1)
    axes[0, 1].plot(c['factors'], c['dropped'], 'o-', c=line.get_color(),
                    label=name)
    for ax in axes[0]:
      ax.axvline(c['train_capacity_factor'], ls=':', c='gray', lw=1)
  for ax in axes[0]:
    ax.set_xscale('log', base=2)
    ax.set_xlabel('eval capacity factor')
  axes[0, 0].set_ylabel('eval loss (nats/byte)')
  axes[0, 1].set_ylabel('dropped fraction')
  axes[0, 0].legend(fontsize=8)
  fig.tight_layout()
  return fig


def drop_attribution(traces: Mapping[str, RoutingTrace]) -> Figure:
  """Where drops fall: per expert, per position in the routing group (per
  k-rank) and per k-rank; one row per model, all MoE layers pooled."""
  fig, axes = _grid(len(traces), 3, size=(4.0, 2.8))
  for row, (name, t) in enumerate(traces.items()):
    by_e = drops.drops_by_expert(t)
    rate_e = by_e['dropped'].sum(0) / np.maximum(by_e['routed'].sum(0), 1)
    axes[row, 0].bar(np.arange(t.num_experts), rate_e)
    axes[row, 0].set_xlabel('expert')
    axes[row, 0].set_ylabel(f'{name}\ndrop rate')
    by_pos = drops.drops_by_group_position(t).mean(0)  # [K, S]
    for k in range(t.top_k):
      axes[row, 1].plot(by_pos[k], label=f'choice {k + 1}')
    axes[row, 1].set_xlabel('position in routing group')
    axes[row, 1].legend(fontsize=8)
    by_k = drops.drops_by_rank(t).mean(0)
    axes[row, 2].bar([f'choice {k + 1}' for k in range(t.top_k)], by_k)
    axes[row, 2].set_ylabel('share of tokens')
  fig.tight_layout()
  return fig


def routing_plan(expert_index: np.ndarray, combine_weights: np.ndarray,
                 slot: np.ndarray, num_experts: int, *, ax=None,
                 title: str = '') -> Figure:
  """One group's routing drawn as a tokens × experts grid.

  Args:
    expert_index, combine_weights, slot: [S, K] of a RoutingPlan (one group).
    num_experts: E.

  Cells are shaded by the gate; a number is the slot taken, a red cross a
  choice that was dropped (or, for a random second policy, not sent).
  """
  expert_index, combine_weights, slot = map(
      np.asarray, (expert_index, combine_weights, slot))
  s, k = expert_index.shape
  grid = np.zeros((num_experts, s))
  fig = None
  if ax is None:
    fig, ax = plt.subplots(figsize=(0.42 * s + 1.5, 0.42 * num_experts + 1))
  for t in range(s):
    for j in range(k):
      grid[expert_index[t, j], t] = combine_weights[t, j]
  ax.imshow(grid, cmap='Blues', vmin=0, vmax=1, aspect='auto')
  for t in range(s):
    for j in range(k):
      e = expert_index[t, j]
      if slot[t, j] >= 0:
        ax.text(t, e, str(slot[t, j]), ha='center', va='center', fontsize=8,
                color='k' if combine_weights[t, j] < 0.6 else 'w')
      else:
        ax.text(t, e, 'x', ha='center', va='center', color='red',
                fontsize=11, fontweight='bold')
  ax.set_xlabel('token (claim order)')
  ax.set_ylabel('expert')
  ax.set_xticks(range(s))
  ax.set_yticks(range(num_experts))
  ax.set_title(title, fontsize=10)
  return fig if fig is not None else ax.figure
