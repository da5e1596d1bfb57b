"""Joining a multi-process run through JAX's own distributed runtime.

`python -m moe_jax.main` calls `initialize()` first. It starts
`jax.distributed` when this process is one of several:
  - explicit flags --coordinator_address/--num_processes/--process_id;
  - or the JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID
    environment variables (what a hand-written launcher sets);
  - or a cluster JAX detects by itself (SLURM with more than one task, a
    multi-host TPU slice), where `jax.distributed.initialize()` needs no
    arguments.
Otherwise it does nothing and the run is single-process.
"""

from __future__ import annotations

import os
import sys
import threading

import jax

from moe_jax.errors import UserInputError


def _cluster_detected() -> bool:
  if int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    return True
  # Multi-host Cloud TPU slices name their workers here.
  return len(os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',')) > 1


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Starts jax.distributed when needed. Returns True if it did."""
  env = os.environ
  coordinator_address = coordinator_address or env.get('JAX_COORDINATOR_ADDRESS')
  if num_processes is None and 'JAX_NUM_PROCESSES' in env:
    num_processes = int(env['JAX_NUM_PROCESSES'])
  if process_id is None and 'JAX_PROCESS_ID' in env:
    process_id = int(env['JAX_PROCESS_ID'])
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise UserInputError(
          'multi-process runs need all of --coordinator_address, '
          '--num_processes and --process_id (or the JAX_COORDINATOR_ADDRESS, '
          'JAX_NUM_PROCESSES and JAX_PROCESS_ID variables).')
    if not 0 <= process_id < num_processes:
      # jax.distributed would raise this with a traceback.
      raise UserInputError(
          f'--process_id={process_id} must be in [0, --num_processes='
          f'{num_processes}); number the processes 0 .. {num_processes - 1}.')
    if num_processes <= 1:
      return False
    _use_gloo_on_cpu()
    with _notice_if_slow(
        f'process {process_id} of {num_processes}: waiting for all processes '
        f'to join at coordinator {coordinator_address}'):
      jax.distributed.initialize(coordinator_address=coordinator_address,
                                 num_processes=num_processes,
                                 process_id=process_id)
    return True
  if _cluster_detected():
    _use_gloo_on_cpu()
    with _notice_if_slow('waiting for all processes to join (coordinator '
                         'found by JAX from the cluster environment)'):
      jax.distributed.initialize()
    return True
  return False


# Joining takes well under a second when every process is up; past this a
# process is waiting for a peer that has not started (or never will).
WAIT_NOTICE_S = 5.0


class _notice_if_slow:  # pylint: disable=invalid-name
  """Prints `message` once on stderr if the block outlasts WAIT_NOTICE_S,
  so a process whose peers never start does not hang silently."""

  def __init__(self, message: str):
    self._timer = threading.Timer(
        WAIT_NOTICE_S, lambda: print(f'{message} ...', file=sys.stderr,
                                     flush=True))
    self._timer.daemon = True

  def __enter__(self):
    self._timer.start()

  def __exit__(self, *exc_info):
    self._timer.cancel()


def _use_gloo_on_cpu() -> None:
  # CPU collectives across processes need an implementation; gloo ships
  # with jaxlib. Harmless where the backend is GPU or TPU.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')


def is_main_process() -> bool:
  return jax.process_index() == 0
