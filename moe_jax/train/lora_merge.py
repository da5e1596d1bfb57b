"""`python -m moe_jax.train.lora_merge`, the documented command: it runs
moe_jax/train/lora/merge.py, where the merge lives."""

import sys

from moe_jax.train.lora.merge import main

if __name__ == '__main__':
  sys.exit(main())
