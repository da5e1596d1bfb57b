"""Which config fields decide what a checkpoint means, and what changed.

A workdir's checkpoint is refused for a config that differs in these fields
(checkpoint.Checkpointer); a checkpoint's saved config is read back with
every field of today's (saved_config), so old runs evaluate as they trained.
"""

from __future__ import annotations

import json
from typing import Any

from flax import traverse_util

from moe_jax.config import renames

# Config sections that decide what a checkpoint means. The rest (learning
# rate, step counts, logging) may change between a run and its resumption.
FINGERPRINT_KEYS = ('seed', 'data', 'batch_size', 'seq_len', 'model', 'moe',
                    'lora')


def _flatten(tree: dict[str, Any]) -> dict[str, Any]:
  """{'model.d_model': 128, ...}: a config dict's fields by dotted name."""
  return traverse_util.flatten_dict(tree, sep='.')


def config_fingerprint(config_dict: dict[str, Any]) -> dict[str, Any]:
  """The flat {'model.d_model': 128, ...} view of the checked sections,
  under today's names (a checkpoint's old names are translated)."""
  plain = json.loads(json.dumps(config_dict, default=str))
  return {k: v for k, v in renames.translate(_flatten(plain)).items()
          if k.split('.')[0] in FINGERPRINT_KEYS}


# Fields added after checkpoints existed whose absence means another value
# than today's default: before data.split, every run held out the tail.
MEANT_WHEN_ABSENT = {'data.split': 'tail'}


def saved_config(saved: dict[str, Any]):
  """A checkpoint's config as a ConfigDict with every field of today's.

  A field the checkpoint predates takes the value it meant then
  (MEANT_WHEN_ABSENT) or today's default, and a field since moved is read
  at its new place (config/renames.py), so that old runs evaluate, merge
  and trace as they trained.
  """
  from moe_jax.config import default_config  # pylint: disable=g-import-not-at-top
  config = default_config.get_default_config()
  with config.unlocked():
    config.update_from_flattened_dict(
        {**MEANT_WHEN_ABSENT, **renames.translate(_flatten(saved))})
  return config


def _added_at_default(key: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
  """A field added to the code after the checkpoint was saved, and left at
  what the run computed before (today's default, or MEANT_WHEN_ABSENT): not a
  difference."""
  if key in old or key not in new:
    return False
  if key in MEANT_WHEN_ABSENT:
    return new[key] == MEANT_WHEN_ABSENT[key]
  # Imported here: the default config is only needed for this rare case.
  from moe_jax.config import default_config  # pylint: disable=g-import-not-at-top
  base = default_config.get_default_config()
  # The fingerprint keeps only the chosen router's options, so take the
  # defaults under the run's router: a field added to its options (e.g.
  # router_options.sigmoid.bias_update) is then found at its default.
  base.moe.router = new.get('moe.router', base.moe.router)
  defaults = config_fingerprint(base.to_dict())
  return key in defaults and defaults[key] == new[key]


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  old, new = config_fingerprint(saved), config_fingerprint(current)
  return [f'{k}: {old.get(k, "<absent>")!r} -> {new.get(k, "<absent>")!r}'
          for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k) and not _added_at_default(k, old, new)]
