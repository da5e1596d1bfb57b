"""A run's identity in runs.csv: a hash of the config fields it sets away from the defaults."""

from __future__ import annotations

import hashlib
import json
import pathlib

from flax import traverse_util


def _flat(tree: dict) -> dict:
  """{'moe.top_k': 1, ...}: a config dict's fields by dotted name."""
  return traverse_util.flatten_dict(tree, sep='.')


def _digest(value) -> str:
  text = json.dumps(value, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def _legacy_flat(config) -> dict:
  """The config's flat fields under the names they had when runs.csv began
  (router options were flat moe.* fields; moe_jax/config/renames.py), so
  every recorded run keeps its hash."""
  from moe_jax.config import renames  # pylint: disable=g-import-not-at-top
  return renames.to_legacy(_flat(config.to_dict()))


def config_hash(config) -> str:
  """Identifies a run by the fields it sets away from moe_jax's defaults.

  So a new config field (added with a default that keeps old behaviour)
  leaves every finished run valid. Changing a default's value changes what
  the ablations compute: runs.csv records defaults_hash, and the runner warns
  when it differs from today's.
  """
  from moe_jax.config.default_config import get_default_config  # pylint: disable=g-import-not-at-top
  defaults = _legacy_flat(get_default_config())
  changed = {k: v for k, v in _legacy_flat(config).items()
             if k not in defaults or defaults[k] != v}
  return _digest(changed)


def legacy_config_hash(config) -> str:
  """The hash of the whole config, which runs.csv held before 2026-11-28."""
  return _digest(traverse_util.unflatten_dict(_legacy_flat(config), sep='.'))


def _default_values() -> dict:
  from moe_jax.config.default_config import get_default_config  # pylint: disable=g-import-not-at-top
  return _legacy_flat(get_default_config())


def defaults_hash() -> str:
  return _digest(traverse_util.unflatten_dict(_default_values(), sep='.'))


# One JSON file per defaults_hash that runs.csv has recorded: the default
# config's fields and values then. A new field (a new router's options, a
# feature that is off by default) changes the hash but no old field's value,
# so the runner compares values and warns only about a changed default.
DEFAULTS_DIR = pathlib.Path(__file__).resolve().parent / 'results' / 'defaults'


def record_defaults() -> str:
  """Writes today's defaults under their hash (once); returns the hash."""
  digest = defaults_hash()
  path = DEFAULTS_DIR / f'{digest}.json'
  if not path.exists():
    DEFAULTS_DIR.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_default_values(), sort_keys=True, indent=1,
                      default=str)
    tmp = path.with_suffix(f'.tmp{id(text)}')
    tmp.write_text(text + '\n')
    tmp.replace(path)  # Atomic: parallel workers may write the same file.
  return digest


def changed_defaults(old_hash: str) -> list[str] | None:
  """Fields whose default value differs between `old_hash` and today.

  None when no snapshot of old_hash was recorded (so nothing is known).
  Fields added or removed since are not changes of a value.
  """
  path = DEFAULTS_DIR / f'{old_hash}.json'
  if not path.exists():
    return None
  old = json.loads(path.read_text())
  now = json.loads(json.dumps(_default_values(), default=str))
  return sorted(k for k in old.keys() & now.keys() if old[k] != now[k])
