"""Checkpoint conversion to and from other formats (Hugging Face)."""
