"""Step 3, collection: the corpus through the model once, encoded with every SAE, stored as
chunks, and the feature rows built from them.

`plan` (tokenised contexts and the chunk plan), `residuals` (the residual store: one forward
pass kept on disk), `collect` (encode and store each chunk), `ray` (the same over a Ray
cluster), `finalize` (feature rows from the stored chunks: four passes), `stream` (the chunks
as finalize's passes read them), `histograms` (per-feature activation histograms), `chunks`
(the stored chunks read back, and the corpus-wide matrices built from them).
"""
