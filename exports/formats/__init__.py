"""One writer and one reader per export format, in a registry.

Formats and what each keeps (everything else is lost on a round trip):
- jsonl, parquet: every field (lossless).
- csv: every field; an empty optional text cell reads back as missing.
- neuronpedia: Neuronpedia's upload batches (upload-batches/batch-NNNNN.json: index, density,
  top activations with tokens and values, explanations with methodName / modelName) plus
  scores.jsonl; reads back text, source, status, author and scores; loses concepts,
  probability, confidence, agreement, Label Studio ids, details, times.
- delphi: SAE, layer, index and text of one explanation per feature (accepted, human first).
- openai: SAE, layer, index, texts and the simulation score (ev_correlation_score).
- safesail-db: SAE, layer, index, text, simulation score (correlation_score) and tags of one
  explanation per feature; sexual_content is written as Safe-SAIL's "pornography".
Formats without provenance (delphi, openai, safesail-db) read back as source "prior".
"""

from exports.formats import interp, safesail_db, tabular  # noqa: F401 - each registers its formats
from exports.formats.registry import FORMATS, Format, Skipped, one_per_feature
from exports.formats.safesail_db import read_neuron_db

__all__ = ["FORMATS", "Format", "Skipped", "one_per_feature", "read_neuron_db"]
