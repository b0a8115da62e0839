"""Step 5, selection: choose the SAE whose features line up best with the safety concepts.

`config` (`SelectionConfig` and the validators configs share), `metrics` (per-feature
statistics of a max-activation matrix, shared with triage), `score` (rank candidate SAEs),
`contrastive` (Safe-SAIL's pre-explanation metric on contrastive pairs), `core_metrics`
(SAEBench's core metrics), `ce_loss` (their CE loss recovered: the splice), `run` (score the
collected SAEs and select one).
"""
