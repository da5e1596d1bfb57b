"""What an ablation is: a base config, named variants, and the claims to check.

Each file experiments/<name>.py defines `ABLATION = Ablation(...)`; the
runner (experiments/run.py) trains every variant at every seed and judges
each Comparison by the rule in experiments/verdict.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import ml_collections
from flax import traverse_util


@dataclasses.dataclass(frozen=True)
class Variant:
  """A named set of config overrides, e.g. {'moe.top_k': 2}."""
  name: str
  overrides: dict[str, Any]


# What a comparison holds equal between its two sides (the verdict table's
# "basis" column); a claim is only meaningful at the basis it was made at.
BASES = ('equal steps', 'equal steps, equal active params',
         'equal steps, equal FLOPs', 'equal time', 'equal total params',
         'equal steps, equal active and total params', 'same checkpoint')


@dataclasses.dataclass(frozen=True)
class Comparison:
  """A paper's claim that `better` scores lower than `worse` on a metric.

  Each side is (variant name, runs.csv column), e.g.
  ('top1_cf1.0', 'eval_loss'). The sides are paired by seed (see
  experiments/verdict.py). `basis` (one of BASES) says what the two sides
  hold equal. With basis 'equal time' the column is read off each run's
  validation curve at the training time of the faster side of the pair
  (experiments/report.py, at_equal_time).
  """
  claim: str
  better: tuple[str, str]
  worse: tuple[str, str]
  basis: str

  def __post_init__(self):
    if self.basis not in BASES:
      raise ValueError(f'basis {self.basis!r} of {self.claim!r} is not one '
                       f'of {BASES}')


@dataclasses.dataclass(frozen=True)
class CheckpointMetrics:
  """Columns measured on a finished run's last checkpoint.

  measure: (config, workdir) -> {column: number}, one of each `columns`.
  """
  columns: tuple[str, ...]
  measure: Callable[..., dict[str, float]]


@dataclasses.dataclass(frozen=True)
class Ablation:
  """One ablation of experiments/README.md.

  Attributes:
    name: also the results folder, experiments/results/<name>/.
    title: one line for the summary's heading.
    source: the paper (and table) the claims come from.
    base: num_steps -> the ConfigDict every variant starts from.
    variants: the runs to train, each at every seed.
    comparisons: the claims to give a verdict on.
    steps: training steps of the full run; quick_steps for --quick.
    extra_evals: name -> eval-only overrides (see moe_jax/train/evaluate.py)
      applied to each finished run's checkpoint, recorded as
      eval_loss@<name> and eval_dropped_fraction@<name>.
    notes: text for the summary (e.g. the capacity convention).
    plot: optional (rows, curves, out_dir) -> list of PNG names, the
      ablation's own figure.
    init_run: optional run trained first, once per seed, from the same base
      and for the same steps, into workdirs/<its name>/seed<s>; every
      variant of that seed then starts from its final parameters
      (train.init_from), e.g. the dense checkpoint that upcycling starts
      from. It is not a row of runs.csv.
    derived: column -> (row, the run's curve points) -> number: columns
      computed from the logged curves (experiments/derived.py), shown in
      the summary and usable in comparisons like runs.csv's own.
    checkpoint_metrics: optional CheckpointMetrics, measured on each
      finished run's last checkpoint (e.g. from a routing trace,
      experiments/derived.py DOMAIN_NMI), stored in runs.csv and usable in
      comparisons.
    prepare: optional () -> None, run once by the runner before any run of
      the ablation trains or is reused: writes what the runs read (e.g. a
      generated corpus), so that building a config stays free of I/O.
  """
  name: str
  title: str
  source: str
  base: Callable[[int], ml_collections.ConfigDict]
  variants: Sequence[Variant]
  comparisons: Sequence[Comparison]
  steps: int
  quick_steps: int
  extra_evals: dict[str, dict[str, Any]] = dataclasses.field(
      default_factory=dict)
  notes: str = ''
  plot: Callable[..., list[str]] | None = None
  init_run: Variant | None = None
  derived: dict[str, Callable[..., float]] = dataclasses.field(
      default_factory=dict)
  checkpoint_metrics: CheckpointMetrics | None = None
  prepare: Callable[[], None] | None = None

  def variant(self, name: str) -> Variant:
    for v in self.variants:
      if v.name == name:
        return v
    raise KeyError(f'{self.name} has no variant {name!r}')


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted fields ('moe.top_k') in place, in order; an unknown field
  raises (ConfigDict's own update would add it to an unlocked config)."""
  known = traverse_util.flatten_dict(config.to_dict(), sep='.')
  for field, value in overrides.items():
    if field not in known:
      from moe_jax.config import renames  # pylint: disable=g-import-not-at-top
      raise KeyError(renames.moved_message(field) or
                     f'unknown config field {field!r}')
    config.update_from_flattened_dict({field: value})
  return config
