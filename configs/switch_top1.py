"""Switch Transformer top-1 MoE LM on the embedded default corpus.

Command:
  python -m moe_jax.main --config=configs/switch_top1.py --workdir=/tmp/switch_top1
Data: the Python standard library's own source (found on every machine).
  Your own text: --config.data.kind=text --config.data.path=<file or folder>,
  e.g. --config.data.path=moe_jax (this checkout's own source; a folder
  reads its .txt/.md/.rst/.py files). --config.data.kind=tinyshakespeare
  downloads Tiny Shakespeare once.
Model: 4 layers, D=128, every 2nd FFN is MoE (E=8, top-1, F=512, cf 1.25
  train / 2.0 eval, index dispatcher); same active parameters as dense.py.
Measured on a 2-core CPU (2026-11-22, jax 0.10.2), running the command above:
  600 steps in 192 s wall, start-up and compilation included; final
  validation loss 1.2846 nats/byte (1.853 bits/byte),
  on the validation split used until 2026-12 (the last 5% of the first
  8 MB of the stdlib); not yet rerun on today's held-out files.
Tiny variant for tests: --config=configs/switch_top1.py:tiny
"""

from moe_jax.config.default_config import (check_variant, get_default_config,
                                          shrink_for_tests)


def get_config(arg: str | None = None):
  check_variant(arg)
  c = get_default_config()
  c.moe.router = 'switch'
  c.moe.top_k = 1
  if arg == 'tiny':
    shrink_for_tests(c)
  return c
