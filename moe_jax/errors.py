"""The one exception type for bad user input, and the one style of check."""

from __future__ import annotations

import numbers


class UserInputError(ValueError):
  """A config value, path, or mesh that cannot work, with the fix in the message.

  It subclasses ValueError so library callers can catch the usual type; the CLI
  prints the message as a single line and exits non-zero.
  """


# The one style of config check: each raises UserInputError with a message
# that names the field, the bad value and what would be accepted, and, with
# `fix`, how to set it (e.g. 'set --config.batch_size').


def require(ok: bool, name: str, value, must: str,
            fix: str | None = None) -> None:
  """One-line error '<name>=<value> must <must>[; <fix>].' unless ok.

  must: what the value must do, e.g. 'be finite and > 0' or 'divide
  model.d_model=128'.
  """
  if not ok:
    raise UserInputError(f'{name}={value!r} must {must}'
                         + (f'; {fix}' if fix else '') + '.')


def check_choice(name: str, value, allowed, fix: str | None = None) -> None:
  """One-line error unless value is one of `allowed`."""
  if value not in allowed:
    raise UserInputError(
        f'{name}={value!r} is not valid; allowed values: '
        f'{", ".join(map(repr, allowed))}' + (f'; {fix}' if fix else '') + '.')


def check_bool(name: str, value, fix: str | None = None) -> None:
  """One-line error unless value is a bool (1 or 'yes' are mistakes here)."""
  require(isinstance(value, bool), name, value, 'be True or False', fix)


def _is_a(value, kinds) -> bool:
  return isinstance(value, kinds) and not isinstance(value, bool)


def _kind(kinds) -> str:
  integral = all(issubclass(k, numbers.Integral) for k in kinds)
  return 'int' if integral else 'number'


def check_positive(name: str, value, kinds=(int,),
                   fix: str | None = None) -> None:
  """One-line error unless value is a positive int (or number, with kinds).

  NaN fails too (`not value > 0`).
  """
  require(_is_a(value, kinds) and value > 0, name, value,
          f'be a positive {_kind(kinds)}', fix)


def check_non_negative(name: str, value, kinds=(int,),
                       fix: str | None = None) -> None:
  """One-line error unless value is an int (or number, with kinds) >= 0."""
  require(_is_a(value, kinds) and value >= 0, name, value,
          f'be {"an int" if _kind(kinds) == "int" else "a number"} >= 0', fix)
