"""LoRA on experts under the expert-parallel mesh, on 4 CPU devices.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 \
      python tests/_parallel_lora.py OUT_DIR

test_train_lora.py writes OUT_DIR/config.json (dotted overrides of the tiny
switch config, a base run in OUT_DIR/base included) and runs this once: it
trains the same LoRA run on mesh (1, 4, 1), 4-way expert parallel, into
OUT_DIR/ep, whose adapters the test compares with a one-device run's.
"""

import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# pylint: disable=g-import-not-at-top,wrong-import-position
import testlib  # tests/ is sys.path[0] for scripts.
from moe_jax.train import trainer


def main(out: pathlib.Path) -> None:
  testlib.require_devices(4)
  overrides = json.loads((out / 'config.json').read_text())
  config = testlib.tiny_config('configs/switch_top1.py', {
      **overrides, 'mesh.shape': (1, 4, 1)})
  trainer.train_and_evaluate(config, str(out / 'ep'))


if __name__ == '__main__':
  main(pathlib.Path(sys.argv[1]))
