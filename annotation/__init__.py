"""The human labeling loop in a real Label Studio."""
