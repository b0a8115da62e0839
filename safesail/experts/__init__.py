"""Simulated experts that label a feature: the reader, which reads its activating tokens as an
annotator does, and the corpus-tag oracle.

`reader` (the reader), `windows` (what it sees of a feature, `ReaderConfig`), `embed` (MiniLM
embeddings and concept prototypes), `answers` (its decision and the answer it writes),
`oracle` (labels from the corpus' concept tags).
"""
