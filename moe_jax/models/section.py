"""An optional model part as a config file holds it: a section of fixed
fields (ml_collections locks their types), off while its switch field is 0.
MLA (model.mla) and YaRN (model.rope_scaling) are two."""

from __future__ import annotations

from typing import Any, Mapping

from moe_jax.errors import UserInputError


def resolve_section(value: Any, cls: type, *, name: str, article: str,
                    off: Mapping[str, Any], switch: str, off_words: str,
                    example: str):
  """value as given (None, a `cls`, or a mapping such as a config file's
  section) -> None or a `cls`.

  Args:
    value: what model.<name> holds.
    cls: the part's frozen dataclass, built from the mapping's fields.
    name: the field's full name, e.g. 'model.mla'.
    article: 'a' or 'an', for cls's name in the error.
    off: the config file's section with the part off (every field).
    switch: the field whose 0 (or absence) turns the part off.
    off_words: what off means, in words, e.g. 'MLA off'.
    example: a value of `switch` that turns the part on.
  """
  if value is None or isinstance(value, cls):
    return value
  if not hasattr(value, 'items'):
    raise UserInputError(
        f'{name}={value!r} must be None, {article} {cls.__name__} or a '
        'mapping of its fields.')
  fields = dict(value.items())
  unknown = sorted(set(fields) - set(off))
  if unknown:
    raise UserInputError(f'{name} has no field {unknown[0]!r}; its fields: '
                         f'{", ".join(off)}.')
  if fields.get(switch):
    return cls(**fields)
  # Off: a field set anyway would do nothing, which is a mistake.
  for field, given in fields.items():
    if given != off[field]:
      raise UserInputError(
          f'{name}.{field}={given!r} does nothing while {name}.{switch}=0 '
          f'({off_words}); set {switch} (e.g. {example}) or leave {field} at '
          f'{off[field]!r}.')
  return None
