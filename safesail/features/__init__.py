"""Step 4, the features: what is kept of each feature and what shows or judges one.

`examples` (top contexts and decile samples, their blob, and the window shown around a
peak), `blobs` (every feature's examples blob at once), `token_kinds` (content, function word,
punctuation, digit or format), `inspector` (which safety features fire on each token of a
prompt).
"""
