"""Config fields that moved: one-line errors for old configs, translation
for old checkpoints and experiment records.

Router options were flat `moe.<field>` entries until the router registry;
they now live at `moe.router_options.<router>.<field>`. Each router's spec
lists its old names (RouterSpec.legacy_fields), so this map is built from
the registry and names no router itself.
"""

from __future__ import annotations

import re
from typing import Any

import ml_collections
from flax import traverse_util

from moe_jax.core import routing
from moe_jax.errors import UserInputError


def moved_fields() -> dict[str, str]:
  """{old dotted name: new dotted name}, e.g. 'moe.slots_per_expert' ->
  'moe.router_options.soft.slots_per_expert'."""
  moved = {}
  for name in routing.names():
    for old, new in routing.get(name).legacy_fields:
      moved[f'moe.{old}'] = f'moe.router_options.{name}.{new}'
  return moved


def moved_message(field: str) -> str | None:
  """The one-line error for a config or flag naming `field` (dotted, or the
  bare last part, as ml_collections reports an unknown key), or None if the
  field did not move."""
  moved = moved_fields()
  new = moved.get(field) or moved.get(f'moe.{field}')
  if new is None:
    return None
  old = field if field in moved else f'moe.{field}'
  return (f'{old} moved to {new} (a router\'s options live under its name); '
          f'set --config.{new} (or c.{new} in a config file) instead.')


def moved_in_argv(argv) -> str | None:
  """moved_message for the first `--config.<old field>=...` flag."""
  for arg in argv:
    match = re.match(r'--config\.([\w.]+)', arg)
    message = match and moved_message(match.group(1))
    if message:
      return message
  return None


def translate(flat: dict[str, Any]) -> dict[str, Any]:
  """A saved flat config under today's layout: old names renamed (old
  checkpoints), and only the chosen router's options kept.

  The other routers' options are at their defaults (MoEConfig refuses
  anything else), so they carry no information; keeping them would make a
  checkpoint differ from the same config in a process where some router
  (a test's, a user's plug-in) is registered and not in the other.
  """
  moved = moved_fields()
  renamed = {moved.get(k, k): v for k, v in flat.items()}
  router = renamed.get('moe.router')
  if router is None:
    return renamed
  keep = f'moe.router_options.{router}.'
  return {k: v for k, v in renamed.items()
          if not k.startswith('moe.router_options.') or k.startswith(keep)}


def to_legacy(flat: dict[str, Any]) -> dict[str, Any]:
  """The inverse of translate: new names back to the old flat ones, so a
  hash of a config over its flat names (experiments/records.py) stays what
  it was for every run recorded before the move."""
  old_of = {new: old for old, new in moved_fields().items()}
  return {old_of.get(k, k): v for k, v in flat.items()}


def translate_nested(config: dict[str, Any]) -> dict[str, Any]:
  """translate for a nested config dict (a checkpoint's saved config)."""
  flat = traverse_util.flatten_dict(config, keep_empty_nodes=True, sep='.')
  return traverse_util.unflatten_dict(translate(flat), sep='.')


class MovedFieldGuard(ml_collections.ConfigDict):
  """A config section that answers a moved field with the one-line error.

  get_default_config builds `moe` as one, so an old config file's
  `c.moe.slots_per_expert = 2` fails where it is written, naming the new
  place, instead of adding a field that nothing reads.
  """

  def __setitem__(self, key, value):
    message = moved_message(f'moe.{key}') if isinstance(key, str) else None
    if message is not None:
      raise UserInputError(message)
    super().__setitem__(key, value)
