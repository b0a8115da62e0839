"""The calibrated LLM explainer (core): explains safety features with any OpenAI-compatible
endpoint (default: SmolLM2-135M-Instruct served by the embedded llama.cpp server), scores the
explanations on held-out contexts, calibrates P(agrees with experts) on the human gold labels
and accepts only above the threshold that reaches the target agreement; the rest is queued for
humans.

Modules: `server` (embedded endpoint), `clients` (cached, accounted, retried chat calls),
`explainers` (prompts), `scorers` (detection, fuzzing, simulation, embedding), `calibration`,
`pipeline` (`safesail explain`), `simulate` (oracle gold labels for tests and benchmarks).
"""
