"""A router added from outside moe_jax: defined and registered in this file.

Hash routing (Roller et al. 2021, "Hash Layers For Large Sparse Models"):
a token goes to expert (token id + salt) mod E, whatever its activations,
with gate 1. The router reads the vocabulary ids through
RouterInputs.token_ids (the model passes its input tokens to every MoE
layer), so the assignment is a function of the id alone and a test can
predict every choice. Nothing else in the repository changes to support
it: the registry gives it a config section (moe.router_options.hash_test),
the CLI trains it, the tracer records it and the expert-parallel path runs
it.

The CLI runs in a subprocess; it learns the router from a config file that
imports this module (registering the router) before building the config.
"""

import dataclasses
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.core import routing
from moe_jax.core.config import MoEConfig
from moe_jax.core.moe import moe_apply
from moe_jax.core.routing.common import build_plan
from moe_jax.errors import UserInputError
from testlib import REPO, moe_params, multi_device_env

NAME = 'hash_test'


@dataclasses.dataclass(frozen=True)
class HashOptions:
  """moe.router_options.hash_test.salt: expert = (id + salt) mod E."""

  salt: int = 0

  def __post_init__(self):
    if not isinstance(self.salt, int) or self.salt < 0:
      raise UserInputError(
          f'router_options.{NAME}.salt={self.salt!r} must be an int >= 0.')


def hash_route(inputs, config, *, train, capacity, key, balance_fn):
  """[G, S] ids -> a top-1 plan: expert (id + salt) mod E, gate 1."""
  del train, key
  if inputs.token_ids is None:
    raise UserInputError(f'router={NAME!r} needs token ids; call the model '
                         '(or pass token_ids= to moe_apply).')
  salt = config.router_options.salt
  expert = ((inputs.token_ids.astype(jnp.int32) + salt) %
            config.num_experts)[..., None]  # [G, S, 1]
  gates = jnp.ones(expert.shape, jnp.float32)
  # The losses and metrics read the softmax of the (unused) logits, as for
  # any router; only the choice ignores them.
  probs = jax.nn.softmax(inputs.logits, axis=-1)
  return build_plan(inputs.logits, probs, expert, gates,
                    jnp.ones(expert.shape, bool), capacity, balance_fn)


SPEC = routing.register(routing.RouterSpec(
    name=NAME, route=hash_route, options=HashOptions, fixed_k=1))

# The tiny config the CLI trains: salt 1, batch 8 so that the (2, 4, 1)
# mesh splits it, 3 steps logged each, an eval and a checkpoint at step 3.
_CONFIG_FILE = f'''
import sys
sys.path.insert(0, {str(REPO / 'tests')!r})
import test_router_plugin  # Registers {NAME!r} before the config is built.
from moe_jax.config.default_config import get_default_config, shrink_for_tests


def get_config(arg=None):
  c = get_default_config()
  c.moe.router = {NAME!r}
  c.moe.router_options.{NAME}.salt = 1
  shrink_for_tests(c)
  c.batch_size = 8
  c.train.num_steps = c.train.eval_every = c.train.checkpoint_every = 3
  c.train.log_every = 1
  return c
'''


def test_moe_apply_sends_each_token_to_its_hash():
  e = 4
  config = MoEConfig(num_experts=e, d_ff=8, router=NAME, capacity_factor=4.0,
                     router_options={NAME: {'salt': 1}})
  ids = jnp.array([[0, 1, 2, 3, 7, 9]])  # [B, L]
  x = jax.random.normal(jax.random.key(0), (1, 6, 4))
  params = moe_params(0, d=4, f=8, e=e)
  _, aux = moe_apply(params, x, config, token_ids=ids, return_routing=True)
  plan = aux['routing']['plan']
  # (id + 1) mod 4, by hand.
  np.testing.assert_array_equal(plan.expert_index[0, :, 0], [1, 2, 3, 0, 0, 2])
  np.testing.assert_array_equal(plan.combine_weights, 1.0)
  # Other activations, same ids: the same experts.
  _, aux2 = moe_apply(params, x * -3.0, config, token_ids=ids,
                      return_routing=True)
  np.testing.assert_array_equal(aux2['routing']['plan'].expert_index,
                                plan.expert_index)


def test_registry_gives_it_a_config_section_and_checks():
  from moe_jax.config.default_config import get_default_config  # pylint: disable=g-import-not-at-top
  assert get_default_config().moe.router_options[NAME].salt == 0
  with pytest.raises(UserInputError, match='fixes|exactly 1'):
    MoEConfig(router=NAME, top_k=2)
  with pytest.raises(UserInputError, match=f'needs router={NAME!r}'):
    MoEConfig(router_options={NAME: {'salt': 3}})
  with pytest.raises(UserInputError, match='needs token ids'):
    moe_apply(moe_params(0, 4, 8, 8), jnp.ones((1, 2, 4)),
              MoEConfig(router=NAME, d_ff=8))


def _cli(tmp_path, workdir, env, *flags):
  config_file = tmp_path / 'hash_config.py'
  config_file.write_text(_CONFIG_FILE)
  proc = subprocess.run(
      [sys.executable, '-m', 'moe_jax.main', f'--config={config_file}',
       f'--workdir={workdir}', *flags], cwd=REPO, env=env,
      capture_output=True, text=True, timeout=400)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [json.loads(line)
          for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def _config():
  """The config file's config, built here (the router is registered)."""
  namespace = {}
  exec(compile(_CONFIG_FILE, 'hash_config.py', 'exec'), namespace)  # pylint: disable=exec-used
  return namespace['get_config']()


@pytest.mark.slow
def test_trains_through_the_cli_traces_and_runs_on_a_mesh(tmp_path):
  one = tmp_path / 'one_device'
  records = _cli(tmp_path, one, multi_device_env(1, fast_compile=True))
  losses = [r['loss'] for r in records if 'loss' in r]
  assert len(losses) == 3 and all(np.isfinite(losses))

  # The routing trace of the trained checkpoint: every choice is the hash.
  from moe_jax.analysis import trace as trace_lib  # pylint: disable=g-import-not-at-top
  trace = trace_lib.trace_checkpoint(_config(), str(one))
  assert trace.meta['router'] == NAME
  e = trace.meta['num_experts']
  want = (trace.tokens.astype(np.int64) + 1) % e
  assert trace.expert.shape[0] >= 1 and trace.num_tokens > 100
  for layer in range(trace.expert.shape[0]):
    np.testing.assert_array_equal(trace.expert[layer, :, 0], want)

  # On a (2, 4, 1) mesh of 8 devices (experts split 4 ways, tokens
  # exchanged all-to-all) the same run gives the same numbers.
  mesh = _cli(tmp_path, tmp_path / 'mesh', multi_device_env(8, fast_compile=True),
              '--config.mesh.shape=(2,4,1)')
  assert len(mesh) == len(records)
  for a, b in zip(records, mesh):
    for key in ('loss', 'aux_loss', 'moe_1/dropped_fraction', 'eval/loss'):
      if key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, err_msg=key)
