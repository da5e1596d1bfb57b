"""The machine a number was measured on, described once for every report."""

from __future__ import annotations

import os
import platform


def describe() -> dict[str, str]:
  """platform, cpu, cpu_cores, python, jax, backend, device, devices."""
  import jax  # pylint: disable=g-import-not-at-top
  return {'platform': platform.platform(),
          'cpu': platform.processor() or platform.machine(),
          'cpu_cores': str(os.cpu_count()),
          'python': platform.python_version(),
          'jax': jax.__version__, 'backend': jax.default_backend(),
          'device': str(jax.devices()[0].device_kind),
          'devices': str(jax.device_count())}
