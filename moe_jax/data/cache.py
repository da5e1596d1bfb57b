"""Where downloads and token caches are kept."""

import os

DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'moe_jax')
# Overrides DEFAULT_CACHE_DIR (downloads and token caches), e.g. in tests.
CACHE_DIR_ENV = 'MOE_JAX_CACHE_DIR'


def default_cache_dir() -> str:
  """$MOE_JAX_CACHE_DIR, else ~/.cache/moe_jax (read at call time)."""
  return os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR
