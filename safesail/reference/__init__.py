"""Step 7, the reference set: features labeled by people reading them, the yardstick for the
simulated expert, triage and the explainer (bench/reference/).

`labels` (the blind view, the sample, the dev/test halves, loading and assembling labels),
`check` (`safesail reference check`: each part judged against the reference set).
"""
