"""The calibrated LLM explainer (core): explains safety features with any OpenAI-compatible
endpoint (default: SmolLM2-135M-Instruct served by the embedded llama.cpp server), scores the
explanations on held-out contexts, calibrates P(agrees with experts) on the human gold labels
and accepts only above the threshold that reaches the target agreement; the rest is queued for
humans.

Modules: `server` (embedded endpoint), `clients` (cached, accounted, retried chat calls),
`explainers` (prompts), `scorers` (the scorer registry: detection, fuzzing, simulation,
embedding), `calibration` (the model and threshold), `materials` (gold labels, explain split,
held-out material), `context` (a run's settings and model), `pipeline` (`safesail explain`: the
run), `routing` (signals, calibration fit, statuses), `report` (the CalibrationReport and the
reliability diagram), `simulate` (oracle gold labels for tests and benchmarks).
"""
