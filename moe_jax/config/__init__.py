"""Experiment configs: the default config, the presets' tiny twins, fine-graining and the config checks.

Configs are ml_collections.ConfigDicts built here and in configs/; nothing in
this package trains or imports the training loop.
"""
