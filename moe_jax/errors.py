"""The one exception type for bad user input."""


class UserInputError(ValueError):
  """A config value, path, or mesh that cannot work, with the fix in the message.

  It subclasses ValueError so library callers can catch the usual type; the CLI
  prints the message as a single line and exits non-zero.
  """
