"""A stand-in for a run in experiments.scheduler's workers (light imports,
so that spawning one stays cheap)."""

import os
import time


def worker_cpus(seconds: float) -> set[int]:
  """The worker's CPUs, after `seconds` (so that the pool, which starts
  workers as tasks wait, starts all of its workers)."""
  time.sleep(seconds)
  return os.sched_getaffinity(0)
