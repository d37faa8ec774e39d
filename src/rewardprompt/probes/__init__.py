"""Reward probes: does a language model's residual stream carry the reward it expects?

Stages, each one config dataclass and one entry function, passing files in a run directory:

* ``collect`` (:mod:`.collect`): residual-stream activations at chosen layers and token
  positions, with their labels, as memory-mappable safetensors shards (resumable);
* ``train`` (:mod:`.train`): linear (AdamW), ridge and MLP probes at one layer and position,
  with held-out R^2, Pearson r and pairwise accuracy and bootstrap CIs;
* ``sweep`` (:mod:`.sweep`): every layer x position, a heatmap of held-out accuracy or r;
* ``compare`` (:mod:`.compare`): one probe on completions of a base and of tuned models,
  beside a reward model, and a probe that tells the models apart;
* ``targets`` (:mod:`.targets`): a reward-conditioned policy's own residual stream, probed for
  the target in its prompt and for the reward its reply earns;
* ``search`` (:mod:`.search`): best-of-n and step-wise selection by the probe, by a reward
  model and at random, with the reward gained per forward pass;
* ``demo`` (:mod:`.demo`): collect, sweep and train on the shipped HH data and SmolLM2-135M.

Torch and transformers load inside the entry functions, so ``--help`` stays fast.
"""
