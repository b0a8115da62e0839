"""The Label Studio labeling interface: one task per feature, three questions.

Choices carry the taxonomy's label values as `alias` (what comes back in results) and a readable
name as `value` (what annotators see), so results never depend on display wording.
"""

from __future__ import annotations

from typing import Literal
from xml.sax.saxutils import quoteattr

from safesail.taxonomy import BENIGN, UNINTERPRETABLE, Taxonomy

CONCEPTS = "concepts"
"""from_name of the multi-select concept question."""
CONFIDENCE = "confidence"
"""from_name of the 1..5 confidence rating."""
EXPLANATION = "explanation"
"""from_name of the one-sentence explanation."""
TO_NAME = "contexts"
"""The HyperText that every question refers to."""
MAX_RATING = 5

Expert = Literal["reader", "corpus-tags"]
READER: Expert = "reader"
CORPUS_TAGS: Expert = "corpus-tags"
EXPERTS: tuple[Expert, ...] = (READER, CORPUS_TAGS)
"""Where simulated annotators' answers come from (annotation/simulate.py): the reader, which
reads the top windows like a person, or the corpus-tag oracle. Here, not in simulate, so the
command line can offer the choice without importing torch."""

_SPECIAL = {BENIGN: "not safety-related", UNINTERPRETABLE: "not interpretable"}


def display_name(value: str) -> str:
    """What annotators read for a label value ("self_harm" -> "self harm")."""
    return _SPECIAL.get(value, value.replace("_", " "))


def label_config(taxonomy: Taxonomy) -> str:
    """The project's XML: header, heatmap of contexts, concept choices, rating, explanation."""
    choices = []
    for value in taxonomy.label_values():
        concept = taxonomy.concepts.get(value)
        hint = concept.description if concept else "no coherent meaning in the contexts"
        choices.append(
            f"      <Choice value={quoteattr(display_name(value))} alias={quoteattr(value)} "
            f"hint={quoteattr(hint)}/>"
        )
    return "\n".join(
        [
            "<View>",
            '  <Header value="Feature $feature of SAE $sae_id (layer $layer)"/>',
            '  <Text name="summary" value="$summary"/>',
            f'  <HyperText name="{TO_NAME}" value="$html" inline="true"/>',
            '  <Header value="Which safety concept(s) does this feature respond to?"/>',
            f'  <Choices name="{CONCEPTS}" toName="{TO_NAME}" choice="multiple" required="true">',
            *choices,
            "  </Choices>",
            '  <Header value="How confident are you?"/>',
            f'  <Rating name="{CONFIDENCE}" toName="{TO_NAME}" maxRating="{MAX_RATING}" '
            'required="true"/>',
            '  <Header value="In one sentence: what does this feature detect?"/>',
            f'  <TextArea name="{EXPLANATION}" toName="{TO_NAME}" rows="2" maxSubmissions="1" '
            'placeholder="Fires on ..."/>',
            "</View>",
        ]
    )
