"""Bounded-buffer dropless expert parallelism on 8 host devices: all-to-all
bytes, memory and time against today's worst-case buffers.

  python benchmarks/bounded_ep.py [--repeats=3] [--no-time]
      [--out=benchmarks/results/bounded_ep.json]

The layer of benchmarks/expert_parallel.py (B·L = 64·128 tokens, D=256,
F=1024, E=8, Switch top-1) with dispatcher='dropless', forward + backward,
jitted with real input shardings on meshes (data, expert, model) = (2,4,1)
and (1,8,1), once per moe.ep_buffer_factor: 'worst' (unset: slots of all
M = G_l·S·K of a device's choices) and f = 2, 1.25, 1 (slots of
R = ceil(f·M/EP) rows; parallel/dropless_ep.py). Reported per row:
  R              rows of one source-destination slot;
  a2a_KiB        bytes of one token all-to-all's buffer on one device, read
                 off the compiled HLO's f32 all-to-all shapes ([EP, R, D]);
  a2a_MiB/step   bytes that leave their device in all f32 all-to-alls of a
                 step, all devices together: on CPU the exchange is dense,
                 so (EP-1)/EP of every buffer moves;
  temp_MiB/dev   XLA's temporary buffers of the step on one device
                 (compiled.memory_analysis());
  overflow_rows  choices that did not fit, all devices, this routing;
  step_ms        median time of one forward + backward (interleaved); on
                 CPU the 8 devices share the machine's cores, so times are
                 indicative only. Under moe.ep_overflow='retry' a step that
                 overflows costs its own time plus the worst-case row's.
"""

from __future__ import annotations

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import argparse  # pylint: disable=g-import-not-at-top,g-bad-import-order
import math
import pathlib
import re
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common
from benchmarks.expert_parallel import B, D, E, F, L, layer_inputs, place
from moe_jax.core import MoEConfig
from moe_jax.parallel import make_mesh
from moe_jax.parallel.dropless_ep import slot_rows
from moe_jax.parallel.expert_parallel import OVERFLOW, parallel_moe_apply

K = 1  # Switch top-1, as the layer of expert_parallel.py.
LAYOUTS = [(2, 4, 1), (1, 8, 1)]
FACTORS = {'worst': None, '2': 2.0, '1.25': 1.25, '1': 1.0}
_A2A = re.compile(r'^\s*(?:ROOT\s+)?%\S+\s*=\s*(.*?)\sall-to-all\(', re.M)


def a2a_buffer_bytes(hlo: str) -> list[int]:
  """Bytes of each f32 all-to-all's result on one device, from compiled HLO
  text (XLA:CPU writes one as a tuple of its EP pieces [1, R, D]; a tiled
  all-to-all's result is the size of its input)."""
  sizes = []
  for result in _A2A.findall(hlo):
    shapes = re.findall(r'f32\[([0-9,]*)\]', result)
    if shapes:
      sizes.append(sum(4 * math.prod(int(d) for d in dims.split(',') if d)
                       for dims in shapes))
  return sizes


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--no-time', action='store_true',
                      help='compile, count bytes and overflow; no timing')
  parser.add_argument('--out', default=common.default_out('bounded_ep'),
                      help='JSON results (default: untracked runs/benchmarks/)')
  args = parser.parse_args()

  params, x = layer_inputs()

  rows, runs = [], {}
  for layout in LAYOUTS:
    mesh = make_mesh(layout)
    p, xs, p_sh, x_sh = place(params, x, mesh)
    data, ep, _ = layout
    m = B // (data * ep) * L * K  # A device's choices.
    for name, factor in FACTORS.items():
      cfg = MoEConfig(num_experts=E, d_ff=F, dispatcher='dropless',
                      ep_buffer_factor=factor)

      def loss(p, x, cfg=cfg):
        y, aux = parallel_moe_apply(p, x, cfg, train=True)
        return (jnp.mean(jnp.square(y)) + aux['aux_loss'],
                aux.get(OVERFLOW, jnp.zeros((), jnp.int32)))

      with jax.set_mesh(mesh):
        step = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True),
                       in_shardings=(p_sh, x_sh))
        compiled = step.lower(p, xs).compile()
        overflow = int(compiled(p, xs)[1])
      buffers = a2a_buffer_bytes(compiled.as_text())
      runs[(layout, name)] = (
          lambda c=compiled, p=p, xs=xs: jax.block_until_ready(c(p, xs)))
      rows.append({
          'mesh (data,expert,model)': str(layout), 'factor': name,
          'R': slot_rows(m, ep, factor), 'M': m,
          'f32_a2a_count': len(buffers),
          'a2a_KiB': max(buffers) / 2**10,
          'a2a_MiB/step': sum(buffers) * (ep - 1) / ep * 8 / 2**20,
          'temp_MiB/dev': compiled.memory_analysis().temp_size_in_bytes / 2**20,
          'overflow_rows': overflow})
  if not args.no_time:  # Interleaved rounds: drift hits every row alike.
    seconds = common.time_interleaved(runs, rounds=args.repeats)
    for row, key in zip(rows, runs):
      row['step_ms'] = 1e3 * seconds[key]
  common.print_table(rows, ['mesh (data,expert,model)', 'factor', 'M', 'R',
                            'f32_a2a_count', 'a2a_KiB', 'a2a_MiB/step',
                            'temp_MiB/dev', 'overflow_rows', 'step_ms'])
  common.write_json(args.out, {
      'timed': not args.no_time, 'load_average': os.getloadavg(),
      'layer': dict(B=B, L=L, D=D, F=F, E=E, K=K, router='switch',
                    dispatcher='dropless'),
      'rows': rows})


if __name__ == '__main__':
  main()
