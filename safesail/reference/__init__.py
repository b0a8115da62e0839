"""Step 7, the reference set: features labeled by people reading them, the yardstick for the
simulated expert, triage and the explainer (bench/reference/).

`sample` (the stratified sample and the blind views its readers read), `readings` (the readers'
labels assembled into the set, their agreement), `labels` (the set: its dev/test halves, loading,
agreement with an answer), `judge` and `check` (`safesail reference check`: each part judged
against the reference set).
"""
