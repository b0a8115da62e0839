"""Active learning over features (modAL + scikit-learn)."""
