"""Interventions: what a job does to the region of a loaded model.

    weights    remove / scale / noise in place, undone bit-exactly (`intervene`, `restore_after`)
    frozen     the frozen set, fp32 master weights and the optimizer step that keeps it exact
    training   the further pre-training loop of `intervention=freeze` (`train_frozen`)

Freeze training: further pre-train a model on target-language text while a frozen set of
parameter entries (a region) stays bit-identical, and measure what the other languages forget.

This is the paper's third experiment (Zhang et al., ACL 2024, §5): freezing the core linguistic
region during further pre-training on one language reduces forgetting of the others at equal
learning of the target.  Everything outside the frozen set trains, embeddings and `lm_head`
included, as in the paper.

    cfg = InterventionConfig(name="freeze", steps=150, lr=1e-3)   # regionbench.config
    with restore_after(model):                      # one loaded model serves many jobs
        summary = train_frozen(model, tok, {"xx": docs}, region, cfg, seed=0, eval_fn=ev)

How the frozen set stays exact: its values are saved before training and written back after every
optimizer step (AdamW's decoupled weight decay would otherwise shrink them even with a zero
gradient).  Their gradients are also zeroed before clipping, so they neither inflate the clipped
norm nor build Adam moments; an entry whose parameter is frozen as a whole leaves the optimizer.
`clip_frozen=true` zeroes them after clipping instead, so the clipped norm counts them as the
authors' code does (it restores the weights after each step and never touches the gradients);
the weights every forward sees are the same either way.  `freeze_exclude` names parameters that
train even inside the region (the authors' frozen set skips norm gains: `[norm]`).

Low-precision models (bf16/fp16, as loaded on GPU) train through fp32 master weights.  AdamW
stepping bf16 parameters directly rounds away every update below half a bf16 ulp: at the paper's
lr 5e-5 most entries of a real model never move, so a freeze study would silently under-train.
Instead the optimizer steps an fp32 copy of each trainable low-precision parameter (its moments
are fp32 too); backward still runs on the model as loaded, each low-precision gradient is added
into its master's fp32 gradient as soon as it is accumulated and then freed, and after each step
the masters are rounded back into the model's own parameters.  The model therefore keeps its
dtype, and evaluation during training sees the same kind of model as the baseline evaluation.
Frozen entries are exact in both copies (an fp32 copy of a bf16 value rounds back to itself).
The cost, per trainable low-precision entry: 4 bytes of master, 8 of Adam moments and 4 of fp32
gradient during a step, against 6 for pure-bf16 AdamW; a 7B bf16 model needs ~112 GB on top of
its 14 GB of weights, before activations.  fp32 parameters train as they are (no copy), under
CUDA bf16 autocast when the whole model is fp32.  There is no loss scaling: fp16 gradients that
underflow are lost, as they would be without masters.
"""
