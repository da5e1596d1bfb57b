"""Helpers shared by the tests: configs, checkpoints, devices, processes."""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def multi_device_env(num_devices: int, fast_compile: bool = False) -> dict:
  """os.environ with XLA forced to `num_devices` CPU devices.

  JAX fixes the device count when its backend starts and the suite itself
  runs on one device, so multi-device work runs in subprocesses with this
  environment. fast_compile sets backend optimisation level 0 (~3x faster
  compiles; CPU code generation only, the same for every mesh compared)
  unless the environment already chose a level (conftest.py sets 0 for the
  whole suite).
  """
  flags = os.environ.get('XLA_FLAGS', '')
  flags = re.sub(r'--xla_force_host_platform_device_count=\S+', '', flags)
  flags += f' --xla_force_host_platform_device_count={num_devices}'
  if fast_compile and 'backend_optimization_level' not in flags:
    flags += ' --xla_backend_optimization_level=0'
  return dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=flags.strip())


def run_device_script(script: pathlib.Path, out_dir, num_devices: int, *,
                      timeout: int, fast_compile: bool = False) -> None:
  """Runs a tests/_parallel_*.py script on `num_devices` devices; it must
  exit 0 after writing its results into out_dir."""
  proc = subprocess.run(
      [sys.executable, str(script), str(out_dir)], cwd=REPO,
      env=multi_device_env(num_devices, fast_compile), capture_output=True,
      text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-5000:]


def load_npz(path) -> dict:
  """The arrays of an .npz file a device script wrote, as a plain dict
  (the file is closed before returning)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  with np.load(path) as data:
    return dict(data)


def assert_trees_close(have: dict, want: dict, rtol: float, what: str):
  """Two {name: array} dicts hold the same arrays: floats to `rtol` of
  each array's scale, everything else (step counters, keys) exactly."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  assert sorted(have) == sorted(want), what
  for key, w in want.items():
    h, where = have[key], f'{what}: {key}'
    assert h.shape == w.shape and h.dtype == w.dtype, where
    if w.dtype.kind != 'f':
      np.testing.assert_array_equal(h, w, err_msg=where)
      continue
    # Relative to the array's scale: elementwise rtol alone would be
    # meaningless for entries that are 0 up to rounding.
    np.testing.assert_allclose(h, w, rtol=rtol,
                               atol=rtol * float(np.max(np.abs(w))),
                               err_msg=where)
def private_compilation_cache(out_dir) -> str:
  """Points JAX's persistent compilation cache at a new folder in out_dir
  (every program cached), so a program that comes back in this process
  loads instead of compiling again; it changes no result. Returns it."""
  import tempfile  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  cache = tempfile.mkdtemp(prefix='jax_cache_', dir=out_dir)
  jax.config.update('jax_compilation_cache_dir', cache)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return cache


def moe_params(seed: int, d: int, f: int, e: int, expert_type: str = 'gelu'):
  """Random MoE layer params with fan-in scaling.

  Fan-in scaling keeps activations and logits O(1): gates are far from
  uniform, so router gradients are not tiny.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  shapes = {'router_kernel': (d, e), 'wi': (e, d, f), 'wo': (e, f, d)}
  if expert_type == 'swiglu':
    shapes['wi_gate'] = (e, d, f)
  return {k: jnp.asarray(rng.normal(size=s) / np.sqrt(s[-2]), jnp.float32)
          for k, s in shapes.items()}


def randomize_params(model, names, seed: int = 3) -> None:
  """Draws a module's parameters named one of `names` from N(0, 0.5²), for
  those that start at 0 or 1 (biases, sinks), where a misplaced one would
  not show. Every name must be found."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  keys = iter(jax.random.split(jax.random.key(seed), 256))
  drawn = []

  def draw(path, x):
    name = [p.key for p in path if hasattr(p, 'key')][-1]  # Then '.value'.
    if name not in names:
      return x
    drawn.append(name)
    return jax.random.normal(next(keys), x.shape) * 0.5

  nnx.update(model, jax.tree.map_with_path(draw, nnx.state(model, nnx.Param)))
  assert set(drawn) == set(names), drawn


def positions_changed_by_later_tokens(fn, x, rng) -> list[int]:
  """Positions t whose output changed when only the tokens after t did.

  fn: x [B, L, D] -> output [B, L, ...]; rng draws the replacement tokens.
  Empty for a lookahead-free layer.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  y = np.asarray(fn(x))
  b, length, d = x.shape
  changed = []
  for t in range(length - 1):
    x2 = x.copy()
    x2[:, t + 1:] = rng.normal(size=(b, length - t - 1, d))
    if not np.array_equal(np.asarray(fn(x2))[:, :t + 1], y[:, :t + 1]):
      changed.append(t)
  return changed


def require_devices(count: int) -> None:
  """Exits a multi-device script with a clear message if JAX has too few."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.device_count() != count:
    sys.exit(f'needs {count} devices (XLA_FLAGS='
             f'--xla_force_host_platform_device_count={count}), got '
             f'{jax.device_count()}; XLA_FLAGS={os.environ.get("XLA_FLAGS")!r}')


def tiny_config(config_file: str, overrides: dict | None = None):
  """The `:tiny` variant of configs/<file>, locked (a typo fails), plus
  dotted `overrides` such as {'train.num_steps': 4}."""
  spec = importlib.util.spec_from_file_location(
      '_tiny_' + pathlib.Path(config_file).stem, REPO / config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config('tiny')
  config.lock()
  config.update_from_flattened_dict(overrides or {})
  return config


def restore_latest(workdir, config, mesh):
  """(latest train state in `workdir`, its shardings), placed on `mesh` as
  setup.init_state places it."""
  from moe_jax.parallel import placement  # pylint: disable=g-import-not-at-top
  from moe_jax.train import setup  # pylint: disable=g-import-not-at-top
  from moe_jax.train.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  _, state, shardings, _ = setup.init_state(setup.model_config(config),
                                            config, mesh)
  ckpt = Checkpointer(workdir, config.train.keep_checkpoints)
  try:
    restored, _ = ckpt.restore(
        placement.abstract_with_shardings(state, shardings))
  finally:
    ckpt.close()
  return restored, shardings


def checkpoint_steps(workdir) -> list[int]:
  """Steps of the finished checkpoints (orbax renames a save when done)."""
  directory = pathlib.Path(workdir) / 'checkpoints'
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def saved_state(workdir, step):
  """The raw TrainState tree (params, opt_state, step, rng) saved at step."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(workdir) / 'checkpoints' / str(step) / 'state'
  return ocp.StandardCheckpointer().restore(path)
