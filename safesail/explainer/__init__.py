"""The calibrated LLM explainer."""
