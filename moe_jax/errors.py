"""The one exception type for bad user input."""


class UserInputError(ValueError):
  """A config value, path, or mesh that cannot work, with the fix in the message.

  It subclasses ValueError so library callers can catch the usual type; the CLI
  prints the message as a single line and exits non-zero.
  """


# The one style of config check: each raises UserInputError with a message
# that names the field, the bad value and what would be accepted.

def check_choice(name: str, value, allowed) -> None:
  """One-line error unless value is one of `allowed`."""
  if value not in allowed:
    raise UserInputError(
        f'{name}={value!r} is not valid; allowed values: {", ".join(map(repr, allowed))}.')


def check_bool(name: str, value) -> None:
  """One-line error unless value is a bool (1 or 'yes' are mistakes here)."""
  if not isinstance(value, bool):
    raise UserInputError(f'{name}={value!r} must be True or False.')


def check_positive(name: str, value, kinds=(int,)) -> None:
  """One-line error unless value is a positive int (or number, with kinds)."""
  if not isinstance(value, kinds) or isinstance(value, bool) or not value > 0:
    kind = 'int' if kinds == (int,) else 'number'
    raise UserInputError(f'{name}={value!r} must be a positive {kind}.')
