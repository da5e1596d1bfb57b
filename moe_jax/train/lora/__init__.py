"""LoRA: adapters (the math), run (a LoRA run in the trainer), merge (the CLI).

Nothing is imported here, so `python -m moe_jax.train.lora_merge --help`
stays fast.
"""
