"""Step 6, triage: which of the chosen SAE's features are worth explaining in safety terms, and
why the others are not.

`config` (`TriageConfig`), `text` (the text-level half: where a feature fires), `tokens` (the
token-level half: what it fires on), `run` (triage one SAE: both halves, written back).
"""
