"""The router zoo on 8 CPU devices; test_train_router_zoo.py checks.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python tests/_parallel_zoo.py OUT_DIR

For each router case, the MoE layer's output, aux loss and gradients with
respect to x and every parameter, on one device and on the (2,4,1) mesh:
<case>_single.npz and <case>_2x4x1.npz. For the balance-loss scopes, the
unweighted loss of each scope on a 2-shard (2,1,1) mesh: scopes.npz (with
the probs and choices it was computed from). mesh_refusals.json: the error
line of each config the (2,4,1) mesh refuses.
"""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# pylint: disable=g-import-not-at-top,wrong-import-position
from testlib import moe_params, require_devices
from moe_jax.core.routing import RouterInputs
from moe_jax.core.routing import switch as switch_lib
from moe_jax.core.config import MoEConfig
from moe_jax.parallel.expert_parallel import parallel_moe_apply
from moe_jax.errors import UserInputError
from moe_jax.parallel import mesh as mesh_lib
from moe_jax.parallel import rules

B, L, D, F, E = 8, 16, 8, 16, 8
_COMMON = dict(num_experts=E, d_ff=F, capacity_factor=1.0, min_capacity=1,
               load_balance_weight=0.1, z_loss_weight=0.01)
CASES = {
    'expert_choice': MoEConfig(router='expert_choice', causal_chunk=8,
                               capacity_factor=2.0, num_experts=E, d_ff=F,
                               min_capacity=1),
    'sigmoid': MoEConfig(
        router='sigmoid', top_k=2, balance_loss_scope='sequence',
        router_options={'sigmoid': {'bias_update_rate': 1e-3}}, **_COMMON),
    # Quantile balancing: the solved bias must be the global batch's.
    'sigmoid_quantile': MoEConfig(
        router='sigmoid', top_k=2, router_options={'sigmoid': {
            'bias_update': 'quantile', 'quantile_weight': 0.5}}, **_COMMON),
    'noisy_topk': MoEConfig(
        router='noisy_topk', top_k=2,
        router_options={'noisy_topk': {'importance_weight': 0.1,
                                       'load_cv_weight': 0.1}}, **_COMMON),
    'bpr': MoEConfig(router='bpr', top_k=1, **_COMMON),
    'deepseek': MoEConfig(
        router='deepseek', top_k=2, router_options={'deepseek': {
            'n_group': 4, 'topk_group': 2, 'routed_scaling_factor': 2.5,
            'bias_update_rate': 1e-3}}, **_COMMON),
    'shared': MoEConfig(router='topk', top_k=2, num_shared_experts=1,
                        **_COMMON),
    'uniform': MoEConfig(router='uniform', top_k=2, **_COMMON),
    # axlearn's adaptive weight: the over-capacity ratio is the global one.
    'adaptive_balance': MoEConfig(
        router='topk', top_k=2, adaptive_balance={
            'log_step': 0.1, 'max_over_capacity': 0.05}, **_COMMON),
    # E·P = Q = 8 slot logits: the same router_kernel shape as the others.
    'soft': MoEConfig(router='soft', causal_chunk=8, num_experts=E, d_ff=F),
    'relu': MoEConfig(router='relu', top_k=2, **_COMMON),
    'null_experts': MoEConfig(router='topk', top_k=3, num_null_experts=4,
                              **_COMMON),
}


def _params(config):
  p = moe_params(0, D, F, E)
  rng = np.random.default_rng(3)
  if config.num_null_experts:  # E + N router outputs.
    p['router_kernel'] = jnp.asarray(
        rng.normal(size=(D, config.num_router_outputs)) / np.sqrt(D),
        jnp.float32)
  for extra in config.extra_params:
    if extra.name == 'router_bias':
      p['router_bias'] = jnp.asarray(rng.normal(size=(E,)) * 0.1, jnp.float32)
    elif extra.name == 'relu_l1_weight':  # λ large enough to matter.
      p['relu_l1_weight'] = jnp.full((1,), 0.05, jnp.float32)
    elif not extra.trainable:  # Other state (the adaptive weight's): mid-run.
      p[extra.name] = jnp.asarray(rng.uniform(0.1, 3.0), jnp.float32)
  if config.router == 'noisy_topk':
    p['noise_kernel'] = jnp.asarray(rng.normal(size=(D, E)) * 0.1,
                                    jnp.float32)
  if config.num_shared_experts:
    fs = config.num_shared_experts * F
    p['shared_wi'] = jnp.asarray(rng.normal(size=(D, fs)) / 3, jnp.float32)
    p['shared_wo'] = jnp.asarray(rng.normal(size=(fs, D)) / 4, jnp.float32)
  return p


_AXES = {'router_kernel': ('embed', None), 'noise_kernel': ('embed', None),
         'router_bias': (None,), 'wi': ('expert', 'embed', 'mlp'),
         'wo': ('expert', 'mlp', 'embed'), 'shared_wi': ('embed', 'mlp'),
         'shared_wo': ('mlp', 'embed'),
         'relu_l1_weight': (None,), 'balance_log_scale': (),
         'over_capacity_average': (), 'over_capacity_count': ()}


def _fn(config):
  def loss(params, x, r):
    y, aux = parallel_moe_apply(params, x, config, train=True,
                                key=jax.random.key(7))
    # Router state after the step (bias updates read the global batch).
    names = [p.name for p in config.extra_params if not p.trainable]
    state = (config.update_state({n: params[n] for n in names}, aux)
             if names else {})
    return jnp.sum(y * r) + aux['aux_loss'], (y, state)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True),
                 compiler_options={'xla_backend_optimization_level': 0})


def _flat(result):
  (loss, (y, state)), (gp, gx) = result
  out = {'loss': loss, 'y': y, 'grad_x': gx}
  out.update({f'grad_{k}': v for k, v in gp.items()})
  out.update({f'state_{k}': v for k, v in state.items()})
  return {k: np.asarray(v) for k, v in out.items()}


def run_cases(out: pathlib.Path) -> None:
  rng = np.random.default_rng(0)
  x = rng.normal(size=(B, L, D)).astype(np.float32)
  r = rng.normal(size=(B, L, D)).astype(np.float32)
  mesh = mesh_lib.make_mesh((2, 4, 1))
  for name, config in CASES.items():
    params, fn = _params(config), _fn(config)
    np.savez(out / f'{name}_single.npz', **_flat(fn(params, x, r)))
    placed = {k: jax.device_put(v, jax.sharding.NamedSharding(
        mesh, rules.logical_to_spec(_AXES[k], mesh=mesh)))
              for k, v in params.items()}
    x_sh = rules.batch_sharding(mesh, 3)
    with jax.set_mesh(mesh):
      result = fn(placed, jax.device_put(x, x_sh), jax.device_put(r, x_sh))
    np.savez(out / f'{name}_2x4x1.npz', **_flat(result))


def run_scopes(out: pathlib.Path) -> None:
  """The three scopes on a 2-shard data-parallel mesh."""
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(4, 6, 3)) * 2, jnp.float32)
  mesh = mesh_lib.make_mesh((2, 1, 1), devices=jax.devices()[:2])
  sharded = jax.device_put(logits, rules.batch_sharding(mesh, 3))
  got = {}
  for scope in ('global', 'micro_batch', 'sequence'):
    config = MoEConfig(num_experts=3, balance_loss_scope=scope)
    route = jax.jit(lambda lg, config=config: config.route(
        RouterInputs(lg, lg, {}), train=True, capacity=None)[1][
            'load_balance_loss'])
    with jax.set_mesh(mesh):
      got[scope] = np.asarray(route(sharded))
  plan, _ = switch_lib.switch_top1(logits, capacity=None)
  np.savez(out / 'scopes.npz', probs=np.asarray(jax.nn.softmax(logits)),
           index=np.asarray(plan.expert_index), **got)


def run_refusals(out: pathlib.Path) -> None:
  from configs import fine_grained_shared  # E = 30: not divisible by 4.
  from moe_jax.train import setup
  config = fine_grained_shared.get_config('tiny')
  config.mesh.shape = (2, 4, 1)
  config.batch_size = 8
  refusals = {}
  try:
    setup.make_mesh(config, setup.model_config(config))
  except UserInputError as e:
    refusals['fine_grained_shared'] = str(e)
  (out / 'mesh_refusals.json').write_text(json.dumps(refusals))


def main(out_dir: str) -> None:
  require_devices(8)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  run_cases(out)
  run_scopes(out)
  run_refusals(out)


if __name__ == '__main__':
  main(sys.argv[1])
