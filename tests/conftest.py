"""Fixtures shared by the test modules."""

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache


@pytest.fixture(scope='session')
def cache_dir(tmp_path_factory):
  """One on-disk XLA cache for the whole session (and its CLI subprocesses)."""
  return str(tmp_path_factory.getbasetemp() / 'jax_cache')


@pytest.fixture(scope='module')
def compilation_cache_on(cache_dir):
  """Turns on JAX's persistent compilation cache for one test module.

  Compiling dominates the training tests; runs that differ only in host-side
  settings (log_every, checkpoint_every) then share compiled programs.
  Nothing computed changes. The old settings come back afterwards.
  """
  options = {'jax_compilation_cache_dir': cache_dir,
             'jax_persistent_cache_min_compile_time_secs': 0,
             'jax_persistent_cache_min_entry_size_bytes': 0}
  old = {name: getattr(jax.config, name) for name in options}
  for name, value in options.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()  # Picks the new directory up.
  yield cache_dir
  for name, value in old.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()
