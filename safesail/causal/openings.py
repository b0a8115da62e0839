"""The refusal openings as token sequences: made prefix-free (so their probabilities add up
to the probability of their union) and packed as a trie (so the model runs once per shared
prefix), for `safesail.causal.intervene.RefusalMeter`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def prefix_free(sequences: Sequence[Sequence[int]]) -> list[list[int]]:
    """Distinct token sequences none of which starts another: their probabilities then sum to
    the probability of their union (a longer opening whose prefix is an opening is covered)."""
    unique = sorted({tuple(s) for s in sequences if s}, key=lambda s: (len(s), s))
    kept: list[tuple[int, ...]] = []
    for seq in unique:
        if not any(seq[: len(k)] == k for k in kept):
            kept.append(seq)
    return [list(s) for s in kept]


@dataclass(frozen=True)
class OpeningTrie:
    """The refusal openings as a token trie, fed after the prompt as one packed row.

    An opening's probability is the product of next-token probabilities along its path, so the
    model is needed only after each *proper prefix* of an opening (a trie node with children),
    once per prefix however many openings share it: ["I"] serves 14 openings, ["I", "'m"] 4.
    Each prefix's last token is one position of the row; a tree attention mask lets it see the
    prompt and its own ancestors only, at the position it would have in the answer, so each
    position computes exactly what feeding that prefix alone would (19 openings: 15 positions
    instead of 19 rows of up to 4 tokens, and no copy of the prompt's cache per opening).
    """

    openings: list[list[int]]
    prefixes: list[tuple[int, ...]]
    """Proper prefixes of the openings, parents before children."""
    index: dict[tuple[int, ...], int]
    """Proper prefix -> 1 + its position in the row (0: the empty prefix, the prompt's end)."""

    @classmethod
    def build(cls, openings: list[list[int]]) -> OpeningTrie:
        prefixes = sorted({tuple(o[:t]) for o in openings for t in range(1, len(o))})
        index = {(): 0, **{p: 1 + i for i, p in enumerate(prefixes)}}
        return cls(openings, prefixes, index)

    def row(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids [k], depth offsets [k] and the ancestor-or-self mask [k, k] of the row."""
        tokens = torch.tensor([p[-1] for p in self.prefixes], dtype=torch.long, device=device)
        depth = torch.tensor([len(p) - 1 for p in self.prefixes], device=device)
        sees = torch.tensor(
            [[q == p[: len(q)] for q in self.prefixes] for p in self.prefixes],
            dtype=torch.bool,
            device=device,
        )
        return tokens, depth, sees

    def log_probability(self, logp: torch.Tensor) -> torch.Tensor:
        """Per prompt, log P(each opening) from next-token log-probs [n, 1 + k, vocab]."""
        out = []
        for opening in self.openings:
            term = logp[:, 0, opening[0]]
            for t in range(1, len(opening)):
                term = term + logp[:, self.index[tuple(opening[:t])], opening[t]]
            out.append(term)
        return torch.stack(out, 1)
