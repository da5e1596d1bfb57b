"""The default experiment config every file in configs/ starts from.

One comment per field. Any field can be overridden on the command line, e.g.
`--config.moe.num_experts=16`; the config is locked, so a typo fails.
"""

from __future__ import annotations

import dataclasses

import ml_collections
from ml_collections import config_dict

from moe_jax.config import renames
from moe_jax.core import routing
from moe_jax.models import mla
from moe_jax.models import yarn
from moe_jax.errors import UserInputError

# The suffixes a config file accepts after its path (`configs/x.py:tiny`).
VARIANTS = ('tiny',)


def check_variant(arg: str | None) -> None:
  """Refuses an unknown `:suffix`: a typo (`:tinyy`, `:Tiny`) would
  otherwise run the full-size config while the user thinks it is tiny."""
  if arg not in (None, '', *VARIANTS):
    accepted = ', '.join(f':{v}' for v in VARIANTS)
    raise UserInputError(f'unknown config suffix :{arg}; use {accepted} or '
                         'no suffix (full size)')


def router_options() -> ml_collections.ConfigDict:
  """`moe.router_options`: one section per registered router that has
  options, holding its Options' defaults (their docstrings explain each):

    gshard.second_policy ('random'), gshard.second_policy_eval ('all'),
    topk.renormalize (True), sigmoid.bias_update_rate (0.0; DeepSeek-V3:
    1e-3), sigmoid.bias_update ('sign'; 'quantile': quantile balancing),
    sigmoid.quantile_weight (1.0), deepseek.* (the same three bias fields,
    plus its group limit and scaling), noisy_topk.importance_weight and .load_cv_weight (0.0; Shazeer
    et al.: 0.1), soft.slots_per_expert (1).

  Built from the registry, so a router registered before the config is
  built gets its section, and --config.moe.router_options.<name>.<field>
  overrides work for it too.
  """
  options = ml_collections.ConfigDict()
  for name in routing.names():
    defaults = routing.get(name).options()
    fields = {f.name: getattr(defaults, f.name)
              for f in dataclasses.fields(defaults)}
    if fields:
      options[name] = ml_collections.ConfigDict(fields)
  return options


def router_eval_only_fields() -> tuple[str, ...]:
  """Router options that change how a checkpoint is evaluated, not what it
  holds (RouterSpec.eval_only), as dotted config fields."""
  return tuple(f'moe.router_options.{name}.{field}'
               for name in routing.names()
               for field in routing.get(name).eval_only)


def get_default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds init and routing noise (and data order, see data.seed).

  c.data = ml_collections.ConfigDict()
  # 'stdlib' | 'text' | 'tinyshakespeare' | 'synthetic' | 'tokens'.
  c.data.kind = 'stdlib'
  # File or folder for 'text', a .npy/.bin token file for 'tokens' (or a
  # local copy for 'tinyshakespeare'). A path with any other kind is an
  # error, not a silent switch to 'text'.
  c.data.path = config_dict.placeholder(str)
  c.data.token_dtype = 'uint16'  # Ids of a 'tokens' .bin file (nanoGPT's).
  # A tokenizer.json, or a Hugging Face model folder holding one, that
  # encodes the text (ids cached); unset: bytes. Set model.vocab_size to match.
  c.data.tokenizer = config_dict.placeholder(str)
  # Truncate the corpus: text bytes (before encoding), or a file's tokens.
  c.data.max_bytes = config_dict.placeholder(int)
  c.data.num_domains = 4  # Domains of 'synthetic'.
  c.data.val_fraction = 0.05  # Share of the corpus held out for validation.
  # 'documents': whole files drawn at random across the corpus (evenly
  # spaced chunks when it has no files); 'tail': the last val_fraction (the
  # split before 2026-12). See moe_jax/data/split.py.
  c.data.split = 'documents'
  # Seeds the order of the training batches (and 'synthetic' data); unset:
  # the run's seed. Set apart from seed to vary init and data separately.
  c.data.seed = config_dict.placeholder(int)

  c.batch_size = 16  # Sequences per step (B).
  c.seq_len = 128  # Bytes per sequence (L).

  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 256  # V: 256 bytes, or the tokenizer's vocabulary.
  c.model.d_model = 128  # D.
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.d_ff = 512  # Dense FFN width; equal to moe.d_ff for a top-1 twin.
  c.model.position = 'rope'  # 'rope' | 'learned'.
  c.model.moe_every = 2  # Every 2nd FFN is MoE (Switch); 0 = dense model.
  c.model.dtype = 'float32'  # Compute dtype; params and router stay f32.
  c.model.init_scale = 1.0  # Variance scale of dense/attention weights.
  # Real architectures (configs/presets/); the defaults change nothing.
  c.model.num_kv_heads = config_dict.placeholder(int)  # GQA; unset = heads.
  c.model.tie_embeddings = False  # Output head = embeddingᵀ.
  c.model.norm_eps = 1e-6  # RMSNorm ε.
  c.model.rope_theta = 10000.0  # Rotary base θ.
  c.model.first_dense_layers = 0  # Leading layers kept dense (DeepSeekMoE).
  c.model.qkv_bias = False  # Biases on q, k, v (Qwen2-MoE).
  # W: attend to the last W positions only (Mixtral); unset: full context.
  c.model.sliding_window = config_dict.placeholder(int)
  # With the window: layers i with (i+1) % this == 0 attend to all (gpt-oss: 2).
  c.model.full_attention_every = 0
  c.model.attention_sinks = False  # A learned logit per head (gpt-oss).
  c.model.attn_out_bias = False  # Bias on the attention output (gpt-oss).
  c.model.head_dim = config_dict.placeholder(int)  # Dh; unset = D / H.
  # RMSNorm on q and k: 'per_head' (Qwen3) | 'all_heads' (OLMoE); unset: none.
  c.model.qk_norm = config_dict.placeholder(str)
  # Multi-head latent attention (DeepSeek-V2/V3; moe_jax/models/mla.py):
  # kv_lora_rank 0 is off; the other widths default to DeepSeek-V3's.
  c.model.mla = ml_collections.ConfigDict(
      dict(mla.off_section(), q_lora_rank=config_dict.placeholder(int)))
  # YaRN rotary scaling (DeepSeek-V2/V3, Qwen3; moe_jax/models/yarn.py):
  # factor 0 is off; original_max_len is the pretraining context.
  c.model.rope_scaling = ml_collections.ConfigDict(dict(
      yarn.off_section(), attention_factor=config_dict.placeholder(float)))

  # Refuses a field that moved (e.g. moe.slots_per_expert), naming its place.
  c.moe = renames.MovedFieldGuard()
  c.moe.num_experts = 8  # E.
  c.moe.top_k = 1  # K.
  # A registered router (moe_jax/core/routing/): 'switch' | 'gshard' |
  # 'topk' | 'expert_choice' | 'sigmoid' | 'noisy_topk' | 'bpr' | 'soft' |
  # 'uniform'.
  c.moe.router = 'switch'
  # Each router's own options, e.g. router_options.gshard.second_policy;
  # only the chosen router's may leave their defaults (router_options()).
  c.moe.router_options = router_options()
  # 'index' | 'einsum' | 'dropless' | 'dropless_ragged' (see MoEConfig).
  c.moe.dispatcher = 'index'
  # 'gelu' | 'swiglu' | 'swiglu_clamped' (gpt-oss); also the dense FFN's.
  c.moe.expert_type = 'gelu'
  # Biases on the router logits and the routed experts' projections (gpt-oss).
  c.moe.use_bias = False
  c.moe.d_ff = 512  # F, per expert.
  c.moe.capacity_factor = 1.25  # Train cf (ST-MoE).
  c.moe.eval_capacity_factor = 2.0  # Eval cf (ST-MoE).
  c.moe.min_capacity = 4  # Floor on C.
  c.moe.capacity_scales_with_k = True  # C = ceil(K·S·cf/E); False: Switch's.
  c.moe.group_size = config_dict.placeholder(int)  # S; unset = per sequence.
  c.moe.jitter_eps = 0.0  # Router input jitter (Switch used 1e-2).
  c.moe.load_balance_weight = 1e-2  # α (Switch).
  c.moe.z_loss_weight = 1e-3  # c_z (ST-MoE).
  c.moe.init_scale = 0.1  # Router/expert init scale (Switch Table 3).
  # Absolute C per group (train and eval) instead of the factors; unset: off.
  c.moe.fixed_capacity = config_dict.placeholder(int)
  # Routers that read the whole group (expert_choice, soft): True =
  # lookahead-free variant; False = the paper's form (leaks the future; the
  # decoder refuses it unless allow_noncausal=True).
  c.moe.causal_routing = True
  c.moe.allow_noncausal = False
  c.moe.causal_chunk = 16  # Q: window/buffer chunk of causal routing.
  # Load-balance loss pooled over 'global' | 'micro_batch' | 'sequence'.
  c.moe.balance_loss_scope = 'global'
  c.moe.num_shared_experts = 0  # K_s always-on experts (DeepSeekMoE).
  c.moe.shared_expert_gate = False  # Sigmoid gate on shared experts (Qwen).
  # N zero-compute null experts in the routing (AdaMoE); topk/gshard/switch.
  c.moe.num_null_experts = 0
  # Dropless under an expert axis: all-to-all buffers of this factor x the
  # balanced load; 0: worst case (EP x it), nothing can overflow.
  c.moe.ep_buffer_factor = 0.0
  # Rows that overflow them: 'retry' the step with worst-case buffers, or
  # 'drop' them; either way each layer logs ep_overflow_rows.
  c.moe.ep_overflow = 'retry'
  # axlearn's adaptive balance weight: α·exp(ℓ), ℓ ± log_step per step while
  # the averaged over-capacity ratio is above max / below min_over_capacity.
  c.moe.adaptive_balance = ml_collections.ConfigDict({
      'log_step': 0.0,  # ε; 0: off (axlearn uses 0.01).
      'max_over_capacity': 0.01,  # Raise α above this averaged drop share.
      'min_over_capacity': 1e-3,  # Lower α below it (axlearn's default).
      'average_min_weight': 0.01,  # Moving-average horizon ~1/this steps.
  })

  # LoRA (Hu et al. 2021) over the frozen parameters of train.init_from;
  # only the adapters train and are saved. See moe_jax/train/lora/.
  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 0  # r; 0: off, every parameter trains.
  c.lora.alpha = 16.0  # Adapters are scaled by alpha / rank.
  # Of 'attention' | 'experts' | 'router' | 'shared_experts' | 'dense_ffn'.
  c.lora.targets = ('attention',)

  c.mesh = ml_collections.ConfigDict()
  # (data, expert, model) sizes; -1 takes the remaining devices. The expert
  # axis also splits the batch. E.g. (2, 4, 1) on 8 devices.
  c.mesh.shape = (-1, 1, 1)
  # Fully sharded data parallelism (ZeRO-3): weights and both Adam moments
  # split over the data axis too, gathered per layer (parallel/rules.py's
  # FSDP_RULES). Changes no result; checkpoints restore across it.
  c.mesh.fsdp = False

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 3e-3  # Peak AdamW learning rate.
  c.optim.warmup_steps = 50  # Linear warmup from 0.
  c.optim.final_lr_fraction = 0.1  # Cosine decays to this × peak.
  c.optim.weight_decay = 0.1  # Decoupled; matrices only.
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.grad_clip = 1.0  # Global-norm clipping.

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 600  # Optimizer steps.
  # N: each step's batch runs as N micro-batches in one scan (memory of one),
  # with the balance statistics of the whole batch (train/accumulate.py).
  c.train.grad_accum_steps = 1
  c.train.log_every = 25  # Steps between metric lines.
  c.train.eval_every = 200  # Steps between validation passes (and at end).
  # Validation batches per pass during training, spread evenly over the
  # whole validation split.
  c.train.eval_batches = 8
  # Batches of the final evaluation (and of moe_jax.evaluate); unset: every
  # full batch of the validation split.
  c.train.final_eval_batches = config_dict.placeholder(int)
  c.train.checkpoint_every = 200  # Steps between checkpoints (and at end).
  c.train.keep_checkpoints = 2  # Checkpoints kept on disk.
  # Peak FLOP/s of one device for the MFU in the log; 0: the table in
  # moe_jax/models/flops.py by device kind (TPUs, A100/H100/H200/B200; a CPU
  # has none, so the log shows FLOP/s without an MFU).
  c.train.peak_flops_per_device = 0.0
  # Workdir of a finished run whose latest parameters start this one (step 0,
  # fresh optimizer state); a resumed run ignores it. See train/init_from.py.
  c.train.init_from = config_dict.placeholder(str)
  # With init_from a dense run: copy its FFNs into every expert of this
  # model's MoE layers, routers fresh (sparse upcycling).
  c.train.upcycle = False
  # With upcycle: re-draw this fraction r of each expert's hidden units from
  # the dense weights' statistics (Drop-Upcycling; r = 0: naive upcycling).
  c.train.upcycle_drop_fraction = 0.0
  return c


def shrink_for_tests(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The 'tiny' variant: the same experiment in seconds (`:tiny` suffix)."""
  c.data.max_bytes = 200_000
  c.batch_size = 4
  c.seq_len = 32
  c.model.d_model = 32
  c.model.num_layers = 2
  c.model.num_heads = 2
  # Keep the expert/dense width ratio, so a config's dense twin stays a twin.
  c.moe.d_ff = max(1, c.moe.d_ff * 64 // c.model.d_ff)
  c.model.d_ff = 64
  c.train.num_steps = 6
  c.train.log_every = 2
  c.train.eval_every = 3
  c.train.eval_batches = 2
  c.train.final_eval_batches = 8  # Of ~80 in the tiny held-out split.
  c.train.checkpoint_every = 3
  c.optim.warmup_steps = 2
  return c
