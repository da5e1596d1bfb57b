"""The pure core imports nothing from the layers above it."""

import ast
import pathlib

CORE = pathlib.Path(__file__).resolve().parents[1] / 'moe_jax' / 'core'
ROOT = CORE.parents[1]
ABOVE = ('moe_jax.parallel', 'moe_jax.layers', 'moe_jax.models',
         'moe_jax.train', 'moe_jax.config')


def _imports(path: pathlib.Path) -> list[str]:
  names = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names += [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.append(node.module)
  return names


def test_core_does_not_import_the_layers_above():
  offending = [(str(p.relative_to(CORE)), name)
               for p in sorted(CORE.rglob('*.py')) for name in _imports(p)
               if name.startswith(ABOVE)]
  assert not offending, offending


def test_configs_do_not_import_the_training_loop():
  # A config file is read before anything trains (and by inspect, which never
  # trains), so building one must not pull in the training package.
  paths = (sorted((ROOT / 'moe_jax' / 'config').rglob('*.py')) +
           sorted((ROOT / 'configs').rglob('*.py')))
  offending = [(str(p.relative_to(ROOT)), name)
               for p in paths for name in _imports(p)
               if name.startswith('moe_jax.train')]
  assert len(paths) > 10 and not offending, offending
