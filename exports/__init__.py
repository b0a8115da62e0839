"""Exports and imports of the gold explanation set."""
