"""Every plot function returns a Figure for traces of top-1 and top-2."""

import matplotlib

matplotlib.use('Agg')  # Headless; set before pyplot is imported.

import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
import pytest
from matplotlib.figure import Figure

from moe_jax.analysis import plots, routing  # pylint: disable=g-import-not-at-top
from moe_jax.analysis.handmade import trace_from_arrays


@pytest.fixture(name='traces')
def _traces():
  rng = np.random.default_rng(0)
  n, e = 512, 4
  tokens = rng.integers(0, 256, n)
  domain = rng.integers(0, 3, n)
  top1 = rng.integers(0, e, (2, n, 1))
  top2 = np.argsort(rng.random((2, n, e)), -1)[..., :2]
  kw = dict(num_experts=e, seq_len=64, group_size=32, tokens=tokens,
            domain=domain)
  return {'top-1': trace_from_arrays(top1, dropped=rng.random(top1.shape) < .1,
                                     **kw),
          'top-2': trace_from_arrays(top2, dropped=rng.random(top2.shape) < .2,
                                     **kw)}


def test_plots_return_figures(traces):
  t = traces['top-2']
  mi = {name: {'domain': routing.expert_label_mi(tr, tr.domain),
               'token': routing.expert_label_mi(tr, tr.tokens)}
        for name, tr in traces.items()}
  curve = {'factors': np.array([0.5, 1.0, 2.0]), 'loss': np.array([3., 2., 1.9]),
           'dropped': np.array([.4, .1, 0.]), 'unrouted': np.zeros(3),
           'dropless_loss': 1.9, 'train_capacity_factor': 1.25}
  figs = [
      plots.expert_load(traces),
      plots.specialisation(t, routing.byte_class(t.tokens),
                           routing.BYTE_CLASSES, title='x'),
      plots.mutual_information(mi),
      plots.transitions(t),
      plots.reuse(traces),
      plots.capacity_curves({'a': curve, 'b': curve}),
      plots.drop_attribution(traces),
      plots.routing_plan(t.expert[0, :8], t.gate[0, :8],
                         np.where(t.dropped[0, :8], -1, 0), 4),
  ]
  for fig in figs:
    assert isinstance(fig, Figure) and fig.axes
    plt.close(fig)
