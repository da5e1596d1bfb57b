"""Runs the MoE layer on meshes of 8 CPU devices; test_parallel_moe.py checks.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python tests/_parallel_moe.py OUT_DIR

For each router case ('switch' top-1, 'gshard' top-2 with second_policy='all'
so nothing is random) it computes the layer output and the gradients with
respect to x and every parameter (router included), once on one device
without a mesh and once on each mesh in MESHES, with the inputs placed with
their real shardings: parameters through the logical-axis rules, x and the
cotangent over the batch axes. The dropless and fused cases run on the
meshes of CASE_MESHES; 'dropless_skewed' has a zero router kernel, so every token
ties and picks experts 0 and 1, which live on one device of the (2,4,1)
mesh: it receives every choice, the exchange's worst case. It writes, under
OUT_DIR:

  <case>_<mesh>.npz   y, loss, aux metrics, grad_x and grad_<param> (mesh
                      'single' is the one-device reference);
  <case>_<mesh>.hlo   compiled HLO text of the jitted forward + backward,
                      for the meshes in HLO_MESHES;
  shards.json         per-device bytes of the expert weights and of their
                      gradients, next to their total bytes.

The assertions live in the test, so this script only computes. Each case and
mesh compiles exactly one program, which serves both the values and the HLO.
"""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Run as a script, the checkout is not on the path the way pytest puts it.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# pylint: disable=g-import-not-at-top,wrong-import-position
from testlib import require_devices  # tests/ is sys.path[0] for scripts.
from moe_jax.core.config import MoEConfig
from moe_jax.parallel.expert_parallel import parallel_moe_apply
from moe_jax.layers.moe import MoELayer
from moe_jax.parallel import mesh as mesh_lib
from moe_jax.parallel import rules

NUM_DEVICES = 8
B, L, D = 8, 16, 8  # B splits 8 ways on every mesh; a group is a sequence.
# (2,2,2) also splits each expert's hidden width over 'model' (psum path).
MESHES = ((8, 1, 1), (2, 4, 1), (1, 8, 1), (2, 2, 2))
# Expert-parallel meshes without a 'model' split, so each device holds
# exactly total / EP bytes of every expert weight.
HLO_MESHES = ((2, 4, 1), (1, 8, 1))

# capacity_factor=1 gives C = ceil(K·S/E): 2 (switch) or 4 (gshard) slots
# per expert for 16 tokens, so an unbalanced router drops some (the test
# checks that drops happen). The aux losses are weighted so their gradients
# reach the router too.
_COMMON = dict(num_experts=8, d_ff=16, capacity_factor=1.0, min_capacity=1,
               load_balance_weight=0.1, z_loss_weight=0.01)
_ALL = {'gshard': {'second_policy': 'all'}}  # Deterministic second choices.
CASES = {
    'switch': MoEConfig(router='switch', top_k=1, **_COMMON),
    'gshard': MoEConfig(router='gshard', top_k=2, router_options=_ALL,
                        expert_type='swiglu', **_COMMON),
    # Dropless: no capacity, so the exchange carries ragged counts.
    'dropless': MoEConfig(router='topk', top_k=2, dispatcher='dropless',
                          expert_type='swiglu', **_COMMON),
    'dropless_ragged': MoEConfig(router='switch', top_k=1,
                                 dispatcher='dropless_ragged', **_COMMON),
    'dropless_skewed': MoEConfig(router='topk', top_k=2,
                                 dispatcher='dropless', **_COMMON),
    # Fused: its loop runs inside shard_map on (4,1,2) (tokens vary over
    # 'data', weights over 'model'); (2,4,1) exchanges the index twin's
    # buffers.
    'fused': MoEConfig(router='gshard', top_k=2, router_options=_ALL,
                       dispatcher='fused', expert_type='swiglu', **_COMMON),
    'dropless_fused': MoEConfig(router='topk', top_k=2,
                                dispatcher='dropless_fused', **_COMMON),
    # gpt-oss: input biases split with their experts (and F over 'model'),
    # the router bias and the output bias, added once after the psum.
    'gpt_oss': MoEConfig(router='topk', top_k=2, dispatcher='dropless',
                         expert_type='swiglu_clamped', use_bias=True,
                         **_COMMON),
    # Soft MoE: its dense plan runs through run_experts, so its slots
    # ([E, G·P, D], P = 2 per chunk of 8) cross devices like capacity buffers.
    'soft': MoEConfig(router='soft', causal_chunk=8, expert_type='swiglu',
                      router_options={'soft': {'slots_per_expert': 2}},
                      **_COMMON),
}
# Cases that run on their own meshes rather than MESHES.
CASE_MESHES = {'dropless': HLO_MESHES, 'dropless_ragged': ((2, 4, 1),),
               'dropless_skewed': ((2, 4, 1),),
               'fused': ((4, 1, 2), (2, 4, 1)),
               'dropless_fused': ((2, 4, 1),), 'gpt_oss': ((2, 2, 2),),
               'soft': HLO_MESHES + ((2, 2, 2),)}
ZERO_ROUTER = ('dropless_skewed',)


def mesh_name(shape) -> str:
  return 'x'.join(map(str, shape))


def _loss_and_grads(config):
  """jit(value_and_grad) of sum(y·r) + aux_loss w.r.t. (params, x)."""

  def loss(params, x, r):
    y, aux = parallel_moe_apply(params, x, config, train=True)
    return jnp.sum(y * r) + aux['aux_loss'], (y, aux)

  # Backend optimisation level 0 compiles ~3x faster; it changes only the
  # CPU code generation, not the HLO (collectives included) the test reads.
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True),
                 compiler_options={'xla_backend_optimization_level': 0})


def _flat(result) -> dict[str, np.ndarray]:
  (loss, (y, aux)), (grad_params, grad_x) = result
  out = {'loss': loss, 'y': y, 'grad_x': grad_x}
  out.update({f'aux_{k}': v for k, v in aux.items()})
  out.update({f'grad_{k}': v for k, v in grad_params.items()})
  return {k: np.asarray(v) for k, v in out.items()}


def _inputs(config, zero_router=False):
  """(params, their annotated abstract state, x, r); values from numpy.

  The logical axis annotations come from an abstract MoELayer (nothing is
  initialised, so nothing compiles); the values are drawn here.
  """
  abstract = nnx.eval_shape(lambda: MoELayer(config, D, rngs=nnx.Rngs(0)))
  state = nnx.state(abstract, nnx.Param)
  rng = np.random.default_rng(0)
  params = {}
  for name, var in state.items():
    shape = var.get_value().shape
    fan_in = shape[-2] if len(shape) > 1 else 1  # Biases [E] too.
    params[name] = (rng.normal(size=shape) / np.sqrt(fan_in)).astype(
        np.float32)
  if zero_router:
    params['router_kernel'] = np.zeros_like(params['router_kernel'])
  x = rng.normal(size=(B, L, D)).astype(np.float32)
  r = rng.normal(size=(B, L, D)).astype(np.float32)
  return params, state, x, r


def place(mesh, params, state, x, r):
  """(params, x, r) on `mesh`: the parameters' shardings from their logical
  annotations, as in training; x and the cotangent r split over the batch
  axes."""
  param_sh = rules.tree_shardings(state, mesh)
  placed = {k: jax.device_put(v, param_sh[k].get_value())
            for k, v in params.items()}
  x_sh = rules.batch_sharding(mesh, x.ndim)
  return placed, jax.device_put(x, x_sh), jax.device_put(r, x_sh)


def run_case(name, config, out_dir: pathlib.Path, shard_report: dict) -> None:
  params, state, x, r = _inputs(config, zero_router=name in ZERO_ROUTER)
  fn = _loss_and_grads(config)
  np.savez(out_dir / f'{name}_single.npz', **_flat(fn(params, x, r)))

  for shape in CASE_MESHES.get(name, MESHES):
    mesh = mesh_lib.make_mesh(shape)
    placed, xs, rs = place(mesh, params, state, x, r)
    with jax.set_mesh(mesh):
      compiled = fn.lower(placed, xs, rs).compile()
      result = compiled(placed, xs, rs)
    np.savez(out_dir / f'{name}_{mesh_name(shape)}.npz', **_flat(result))
    if shape in HLO_MESHES:
      (out_dir / f'{name}_{mesh_name(shape)}.hlo').write_text(
          compiled.as_text())
      grad_params = result[1][0]
      shard_report[f'{name}_{mesh_name(shape)}'] = {
          'expert_axis': mesh_lib.axis_size(mesh, 'expert'),
          **{f'{kind}_{k}': {
              'total': int(arr.nbytes),
              'per_device': [int(s.data.nbytes) for s in arr.addressable_shards],
              'shape': list(arr.shape)}
             for kind, tree in (('param', placed), ('grad', grad_params))
             for k, arr in tree.items() if k != 'router_kernel'}}


def main(out_dir: str) -> None:
  require_devices(NUM_DEVICES)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  shard_report = {}
  for name, config in CASES.items():
    run_case(name, config, out, shard_report)
  (out / 'shards.json').write_text(json.dumps(shard_report, indent=1))


if __name__ == '__main__':
  main(sys.argv[1])
