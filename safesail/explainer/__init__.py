"""The explainer (core): a trust-or-escalate cascade that covers the safety features people
have not labeled, accepting an automatic explanation only where fixed-sequence testing on the
human gold labels proves agreement with the experts (target, delta), and routing the rest to
people. Stages: the active learner's concept model, the LLM (default: SmolLM2-135M-Instruct
behind the embedded llama.cpp server) asked several times, optionally a stronger endpoint.

Modules: `server` (embedded endpoint), `clients` (cached, accounted, retried chat calls),
`explainers` (prompts), `scorers` (the scorer registry: detection, fuzzing, simulation,
intruder, embedding; measurements, not the acceptance), `calibration` (fixed-sequence testing,
the cascade's thresholds), `materials` (gold labels, explain split, held-out material, marked
tokens), `context` (a run's settings and models), `pipeline` (`safesail explain`: the run),
`stages` (the stages and the plan), `agreement` (the agreement rule and the concept model's
sentence), `routing` (the cascade's decisions, statuses, stale acceptances, the human queue),
`report` (the CalibrationReport and the reliability diagram), `simulate` (oracle gold
labels for tests and benchmarks).
"""
