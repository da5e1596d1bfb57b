"""Round 2: where the balance loss pools its statistics — global batch,
micro-batch or sequence.

  python -m experiments.run balance_scope --jobs 2   # 3 seeds, 9 runs
  python -m experiments.run balance_scope --quick

The regime's Switch top-1 model (α = 1e-2) trained on notebook 02's
labelled corpus instead of the standard library alone: standard-library
code without docstrings, its English docstrings and two synthetic
languages, cut into documents of 300-1,000 bytes and shuffled together
(moe_jax/analysis/corpora.py code_prose_mix, 3,000,000 bytes, seed 0,
written once under the cache directory with its domain labels). Every
variant accumulates gradients over 4 micro-batches of 4 sequences
(train.grad_accum_steps = 4), so that micro-batches are real, and differs
only in moe.balance_loss_scope (moe_jax/core/losses.py):
  global       f and P pooled over the whole step, all micro-batches (the
               accumulation's extra forward pass counts f first; about a
               third more compute per step: equal steps, not equal FLOPs);
  micro_batch  pooled per micro-batch of 4 sequences, then averaged (what a
               per-device implementation computes);
  sequence     pooled per sequence (the routing group), then averaged.

What is measured, besides the validation loss: domain specialisation as
notebook 02 measures it, the normalised mutual information between each
MoE layer's first-choice expert and the domain of the byte over
train.eval_batches validation batches of the run's last checkpoint, its
floor with the labels shuffled, and their difference
(experiments/derived.py domain_nmi; `neg_domain_nmi` is minus the NMI above
its floor, so that lower is more specialised).

Sources of the claims (stated before any run): Qiu et al. 2025, "Demons in
the Detail: On Implementing Load Balancing Loss for Training
Specialized Mixture-of-Expert Models" (arXiv 2501.11873), abstract: the
global-batch balance loss "significantly improves both pre-training
perplexity and downstream tasks" and "greatly improves the domain
specialization of MoE experts"; micro-batch balance behaves like
sequence-level balance when micro-batches hold few sequences (as quoted in
shared/docs/MOE_REFERENCE.md). Their models are up to 42.8B parameters on
up to 400B tokens, with softmax top-k routers and many domains; here a
top-1 router over 8 experts sees 2M bytes of 4 domains, so the claims may
not carry over.
"""

from __future__ import annotations

from experiments import derived, regime_config
from experiments.ablation import Ablation, Comparison, Variant, apply_overrides
from moe_jax.analysis import corpora
from moe_jax.data.cache import default_cache_dir

SCOPES = ('global', 'micro_batch', 'sequence')
# Notebook 02's full-size mix.
MIX_BYTES, MIX_SYNTHETIC, MIX_SEED = 3_000_000, 2, 0
ACCUM = 4  # Micro-batches per step: 4 sequences each of the 16.
SAME = 'equal steps'
DATA_NOTE = (' Data: notebook 02\'s mix (code, prose, 2 synthetic languages; '
             f'{MIX_BYTES:,} bytes), 4 micro-batches of 4 sequences per '
             'step.')


def mix_path() -> str:
  """Where the corpus lives: the cache directory, one file per mix."""
  import os  # pylint: disable=g-import-not-at-top
  return os.path.join(
      os.path.expanduser(default_cache_dir()), 'corpora',
      f'code_prose_mix_{MIX_BYTES}_s{MIX_SYNTHETIC}_seed{MIX_SEED}.txt')


def _prepare() -> None:
  corpora.write_mix(mix_path(), MIX_BYTES, MIX_SYNTHETIC, MIX_SEED)


def _base(num_steps: int):
  return apply_overrides(regime_config.regime_base(num_steps), {
      'data.kind': 'text', 'data.path': mix_path(),
      'train.grad_accum_steps': ACCUM})


def _claim(text, better, worse, column):
  return Comparison(f'Qiu 2025: {text}', (better, column), (worse, column),
                    SAME)


ABLATION = Ablation(
    name='balance_scope',
    title='balance loss pooled per global batch, micro-batch or sequence '
          '(Switch top-1 on a code/prose/synthetic mix)',
    source=('Qiu et al. 2025, "Demons in the Detail" (arXiv 2501.11873), '
            'abstract'),
    base=_base,
    variants=tuple(Variant(s, {'moe.balance_loss_scope': s}) for s in SCOPES),
    comparisons=(
        _claim('global scope gives an equal or better loss than micro-batch '
               'scope', 'global', 'micro_batch', 'eval_loss'),
        _claim('global scope gives experts more specialised by domain than '
               'micro-batch scope (expert × domain NMI)', 'global',
               'micro_batch', 'neg_domain_nmi'),
        _claim('global scope gives an equal or better loss than sequence '
               'scope', 'global', 'sequence', 'eval_loss'),
        _claim('global scope gives experts more specialised by domain than '
               'sequence scope', 'global', 'sequence', 'neg_domain_nmi'),
    ),
    steps=regime_config.REGIME_STEPS,
    quick_steps=60,
    notes=regime_config.CAPACITY_NOTE + DATA_NOTE + (
        ' domain_nmi: NMI between the first-choice expert and the domain '
        '(mean over the MoE layers) on train.eval_batches validation '
        'batches of the last checkpoint; domain_nmi_floor: the same with '
        'the labels shuffled; neg_domain_nmi = floor − NMI.'),
    checkpoint_metrics=derived.DOMAIN_NMI,
    prepare=_prepare,
)
