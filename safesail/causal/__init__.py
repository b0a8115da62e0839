"""The causal check of labeled safety features: edit a feature in the residual stream (ablate
or steer it) and measure the change in the model's refusal propensity and in its own concept
(a probe) on held-out prompts.

`prompts` (held-out prompt sets, refusal openings), `config` (settings, light to import),
`intervene` (the edits and the refusal meter), `probe` (concept probes, cached per workspace),
`score` (effects, bootstrap, Score rows), `run` (every human-labeled safety feature of an SAE:
`safesail causal`), `plugin` (its step in `safesail demo`).
"""
