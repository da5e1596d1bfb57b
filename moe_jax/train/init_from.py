"""Starting a run from another run's parameters; sparse upcycling.

`train.init_from=<workdir>` starts a new run (step 0, fresh optimizer state,
the new run's own learning-rate schedule) from the parameters of that
workdir's latest checkpoint. Each parameter is copied from the one with the
same path and shape.

`train.upcycle=True` also lets a layer that is dense there be an MoE layer
here (sparse upcycling, Komatsuzaki et al. 2022): its dense FFN is copied
into every expert and the router is initialised fresh. With gates that sum
to 1 over the chosen experts and nothing dropped (e.g. `moe.router='topk'`
with a dropless dispatcher), the upcycled model computes exactly the dense
model's function at the start; the experts then diverge as the router learns.
`train.upcycle_drop_fraction=r` re-draws a random fraction r of each
expert's hidden units after the copy (Drop-Upcycling, drop_upcycle.py).

The checks (`plan_init`) look only at shapes, so a mismatch is one line of
error before anything is written or compiled.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import numpy as np
from flax import nnx

from moe_jax.errors import UserInputError
from moe_jax.train import checkpoint, drop_upcycle

# An MoE layer's stacked expert weights [E, ...] and the dense FFN's [...].
EXPERT_NAMES = ('wi', 'wi_gate', 'wo')
# Parameters a dense FFN has no counterpart for: they keep their fresh init.
FRESH_NAMES = ('router_kernel', 'noise_kernel', 'shared_wi', 'shared_wi_gate',
               'shared_wo')


def _key_name(key) -> str:
  for attr in ('key', 'idx', 'name'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def key_path(keys) -> str:
  """'blocks/1/ffn/wi' for the key path of a params leaf.

  nnx.State leaves end in `.value`, and orbax's raw restore wraps each leaf
  as {'value': leaf} and turns list indices into strings; every spelling
  maps to the same path.
  """
  names = [_key_name(k) for k in keys]
  if names and names[-1] == 'value':
    names = names[:-1]
  return '/'.join(names)


def flatten(tree) -> dict[str, object]:
  """{'blocks/1/ffn/wi': leaf, ...} of a params tree (see key_path)."""
  return {key_path(keys): leaf
          for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def plan_init(source: dict[str, tuple[int, ...]],
              target: dict[str, tuple[int, ...]], *, upcycle: bool,
              name: str) -> dict[str, str]:
  """How to fill each target parameter from the source run's parameters.

  Args:
    source: path -> shape of the checkpoint's parameters.
    target: path -> shape of this model's parameters.
    upcycle: whether a dense FFN may fill an MoE layer's experts.
    name: the source, for messages.

  Returns:
    path -> 'copy' (same shape), 'tile' (the dense FFN's weight, copied into
    each of the E experts) or 'fresh' (a router: keep the new init).

  Raises:
    UserInputError: a parameter has no source or a different shape, a
      source parameter has no place here, or upcycle finds nothing to do.
  """
  plan, fix = {}, ('init_from needs a run of the same model, or with '
                   'train.upcycle=True its dense twin (model.moe_every=0)')
  for path, shape in target.items():
    leaf = path.rsplit('/', 1)[-1]
    have = source.get(path)
    if have is None and leaf in FRESH_NAMES:
      plan[path] = 'fresh'
    elif have is None:
      raise UserInputError(
          f"the checkpoint in {name} has no parameter '{path}' {list(shape)};"
          f' {fix}')
    elif tuple(have) == tuple(shape):
      plan[path] = 'copy'
    elif leaf in EXPERT_NAMES and len(shape) == len(have) + 1:
      if not upcycle:
        raise UserInputError(
            f"'{path.rsplit('/', 1)[0]}' is a dense FFN in {name} and an MoE "
            'layer here; set --config.train.upcycle=True to copy it into '
            'every expert')
      if tuple(have) != tuple(shape[1:]):
        raise UserInputError(
            f"the dense FFN weight '{path}' in {name} is {list(have)} but each "
            f'expert here is {list(shape[1:])}; upcycling needs moe.d_ff equal '
            "to the dense run's model.d_ff and the same model.d_model")
      plan[path] = 'tile'
    else:
      raise UserInputError(
          f"parameter '{path}' is {list(have)} in {name} but {list(shape)} "
          f'here; {fix}')
  unused = sorted(set(source) - set(target))
  if unused:
    raise UserInputError(
        f"parameter '{unused[0]}' of {name} has no counterpart here "
        f'({len(unused)} such); {fix}')
  if upcycle and 'tile' not in plan.values():
    raise UserInputError(
        f'train.upcycle=True but no layer is dense in {name} and MoE here; '
        'upcycle from a dense run (model.moe_every=0) into a model with MoE '
        'layers, or unset train.upcycle')
  return plan


def apply_plan(plan: dict[str, str], source: dict[str, np.ndarray],
               target: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The new parameters, path -> array, following `plan` (see plan_init)."""
  out = {}
  for path, how in plan.items():
    if how == 'copy':
      out[path] = source[path]
    elif how == 'tile':
      out[path] = np.broadcast_to(source[path], target[path].shape)
    else:
      out[path] = target[path]
  return out


@dataclasses.dataclass(frozen=True)
class InitSource:
  """A checked plan and the source parameters (host arrays), ready to apply.

  drop_fraction and seed: Drop-Upcycling's r and the seed of its draws
  (drop_upcycle.py); r = 0 copies the dense FFN into every expert as is.
  """
  workdir: pathlib.Path
  step: int
  plan: dict[str, str]
  params: dict[str, np.ndarray]
  drop_fraction: float = 0.0
  seed: int = 0

  @property
  def num_tiled_layers(self) -> int:
    return len({p.rsplit('/', 1)[0] for p, how in self.plan.items()
                if how == 'tile'})


def read_params(workdir: str | pathlib.Path, step: int | None = None
                ) -> tuple[int, dict[str, np.ndarray]]:
  """(step, path -> host array) of a run's checkpoint (default: latest)."""
  step, state, _ = checkpoint.read(workdir, step)
  return step, flatten(state['params'])


def from_config(config, model_fn) -> InitSource | None:
  """train.init_from's checked InitSource, or None when it is unset.

  model_fn: () -> the new nnx model (only its shapes are computed).
  """
  if not config.train.init_from:
    return None
  source = prepare(config.train.init_from, config.train.upcycle, model_fn)
  return dataclasses.replace(
      source, seed=config.seed,
      # Configs saved before the field existed hold no r: naive upcycling.
      drop_fraction=config.train.get('upcycle_drop_fraction', 0.0))


def prepare(init_from: str, upcycle: bool, model_fn) -> InitSource:
  """Reads `init_from`'s parameters and plans this model's init from them.

  Args:
    init_from: the source run's workdir.
    upcycle: train.upcycle.
    model_fn: () -> the new nnx model (only its shapes are computed).
  """
  step, params = read_params(init_from)
  target = flatten(nnx.to_pure_dict(nnx.state(nnx.eval_shape(model_fn),
                                              nnx.Param)))
  plan = plan_init({k: v.shape for k, v in params.items()},
                   {k: v.shape for k, v in target.items()},
                   upcycle=upcycle, name=init_from)
  return InitSource(pathlib.Path(init_from), step, plan, params)


def apply(source: InitSource, params: nnx.State) -> nnx.State:
  """`params` (the new model's, placed on its mesh) filled from `source`.

  Each new array is built shard by shard on the old one's sharding, so this
  works for a mesh over several processes as it does for one device.
  """
  pure = nnx.to_pure_dict(params)
  target = flatten(pure)
  new = drop_upcycle.apply(source.plan, source.params,
                           apply_plan(source.plan, source.params, target),
                           source.drop_fraction, source.seed)

  def place(keys, old):
    path = key_path(keys)
    if source.plan[path] == 'fresh':
      return old
    value = np.asarray(new[path], old.dtype)
    return jax.make_array_from_callback(old.shape, old.sharding,
                                        lambda index: value[index])

  nnx.replace_by_pure_dict(params,
                           jax.tree_util.tree_map_with_path(place, pure))
  return params


def fill(tree: nnx.State, source: dict[str, np.ndarray], name: str
         ) -> nnx.State:
  """`tree` with every leaf copied from `source` (same paths and shapes).

  The checks are plan_init's, so a leaf missing on either side is one line
  of error naming `name`.
  """
  plan = plan_init({k: v.shape for k, v in source.items()},
                   {k: v.shape for k, v in flatten(
                       nnx.to_pure_dict(tree)).items()},
                   upcycle=False, name=name)
  return apply(InitSource(pathlib.Path(name), 0, plan, source), tree)
