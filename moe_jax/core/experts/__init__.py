"""Expert functions: stacked expert weights applied to per-expert rows.

mlp.py holds the GELU and SwiGLU experts and the EXPERT_FNS registry (the
names `moe.expert_type` accepts); blocked_mlp.py and gathered_mlp.py are the
tiled kernels they run on the dropless and fused layouts; manual_axes.py
keeps those kernels' zeros typed like their inputs inside shard_map.
A new expert type is one function here and one EXPERT_FNS entry.
"""

from moe_jax.core.experts.mlp import (EXPERT_FNS, EXPERT_TYPES, PARAM_AXES,
                                      clamped_swiglu_mlp, is_gated,
                                      expert_matmul, gelu_mlp, swiglu_mlp)
