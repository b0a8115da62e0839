"""The Python API other rooms build on: one object per workspace, one method per pipeline step.

Each step reads its inputs from the database and writes its results back in a transaction, so
steps can be rerun (idempotent) and interrupted (resumable) independently.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, update
from sqlmodel import Session, select

from safesail.config import (
    DEFAULT_SAES,
    EMBEDDED_MODEL,
    CollectConfig,
    SaeSpec,
    TrainConfig,
    WorkspaceConfig,
)
from safesail.db.queries import chunked, require_selected_sae, selected_sae
from safesail.db.tables import (
    Context,
    CorpusText,
    Feature,
    SaeRecord,
    corpus_concepts,
    get_meta,
    open_db,
    session_scope,
    set_meta,
)
from safesail.errors import SafesailError
from safesail.selection.config import SelectionConfig
from safesail.taxonomy import Taxonomy
from safesail.triage.config import TriageConfig

if TYPE_CHECKING:
    from safesail.collection.residuals import ResidualStore

TRAIN_BATCH = 32
"""Texts per forward pass when gathering SAE training residuals."""


def _sample_tokens(contexts: list[list[int]], max_tokens: int | None, seed: int) -> list[int]:
    """Indices of a seeded random subset of contexts holding at most max_tokens tokens (all if
    None)."""
    if max_tokens is None:
        return list(range(len(contexts)))
    order = np.random.default_rng(seed).permutation(len(contexts))
    budget = np.cumsum([len(contexts[i]) for i in order])
    return sorted(int(i) for i in order[budget <= max_tokens])


class Workspace:
    """A folder (and database) holding one project's corpus, SAEs, features and labels."""

    def __init__(
        self, config: WorkspaceConfig, model_name: str | None = None, lm: Any = None
    ) -> None:
        self.config = config
        if lm is not None:  # an already-loaded model (tests, notebooks) skips loading it again
            self.__dict__["lm"] = lm
            model_name = model_name or lm.name
        config.workspace.mkdir(parents=True, exist_ok=True)
        self.engine = open_db(config.resolved_db_url)
        if config.db_url is None:  # the database travels with the folder: so do its SAE paths
            from safesail.model.saes import rebase_sae_paths

            with session_scope(self.engine) as session:
                rebase_sae_paths(session, config.workspace)
        with Session(self.engine) as session:
            stored = get_meta(session, "model")
        if model_name and stored and model_name != stored:
            raise SafesailError(
                f"this workspace was built with model '{stored}', not '{model_name}'; use another --workspace"
            )
        self.model_name = model_name or stored or EMBEDDED_MODEL

    @cached_property
    def lm(self):
        from safesail.model.lm import load_model

        return load_model(
            self.model_name,
            self.config.cache_dir,
            device=self.config.device,
            dtype=self.config.dtype,
        )

    # -- corpus -------------------------------------------------------------------------------
    @property
    def taxonomy(self) -> Taxonomy:
        with Session(self.engine) as session:
            stored = get_meta(session, "taxonomy_path")
        return Taxonomy.load(Path(stored) if stored else None)

    def use_taxonomy(self, path: Path) -> Taxonomy:
        taxonomy = Taxonomy.load(path)
        with session_scope(self.engine) as session:
            set_meta(session, "taxonomy_path", str(path.resolve()))
        return taxonomy

    def add_corpus(self, records: Sequence[Any]) -> int:
        """Insert corpus records, skipping texts already present; returns how many were new."""
        with session_scope(self.engine) as session:
            known = set(session.exec(select(CorpusText.text)))
            next_id = (session.exec(select(func.max(CorpusText.id))).one() or 0) + 1
            added = 0
            for record in records:
                if record.text in known:
                    continue
                known.add(record.text)
                session.add(
                    CorpusText(
                        id=next_id + added,
                        text=record.text,
                        source=record.source,
                        license=record.license,
                        concepts=list(record.concepts),
                    )
                )
                added += 1
        return added

    def build_default_corpus(self, *, max_benign: int = 3000, progress: bool = True) -> int:
        from safesail.corpus.build import build_default_corpus

        records = build_default_corpus(
            self.config.cache_dir / "corpus",
            self.taxonomy,
            max_benign=max_benign,
            progress=progress,
        )
        return self.add_corpus(records)

    def corpus_counts(self) -> dict[str, int]:
        with Session(self.engine) as session:
            counts = Counter(c for row in session.exec(select(CorpusText.concepts)) for c in row)
        return dict(sorted(counts.items()))

    # -- SAEs -----------------------------------------------------------------------------------
    def train_saes(
        self,
        specs: Sequence[SaeSpec] = DEFAULT_SAES,
        config: TrainConfig | None = None,
        *,
        max_tokens: int = CollectConfig.max_tokens,
    ) -> list[str]:
        """Train the candidates that are not trained yet (an interrupted run resumes per SAE),
        on residuals read from the workspace's residual store when it holds their layers."""
        from safesail.model.saes import register_sae, train_sae

        config = config or TrainConfig()
        for layer in {s.layer for s in specs}:
            self.lm.check_layer(layer)
        with Session(self.engine) as session:
            have = {r.id for r in session.exec(select(SaeRecord))}
        todo = [s for s in specs if s.sae_id not in have]
        if not todo:
            return []
        untrained = [s for s in todo if not (self.config.sae_dir / s.sae_id / "cfg.json").exists()]
        # a rerun after a crash between training and registering skips the forward
        needed = sorted({s.layer for s in untrained})
        residuals = self._training_residuals(needed, config, max_tokens) if needed else {}
        for spec in todo:
            path = self.config.sae_dir / spec.sae_id
            if spec in untrained:
                path = train_sae(
                    residuals[spec.layer], spec, config, self.model_name, self.config.sae_dir
                )
            with session_scope(self.engine) as session:
                register_sae(session, self.lm, path, source="trained", sae_id=spec.sae_id)
        return [s.sae_id for s in todo]

    def _training_residuals(
        self, layers: list[int], config: TrainConfig, max_tokens: int
    ) -> dict[int, Any]:
        """The seeded training sample's residuals after each layer's block, in the same order
        whether they are read from the residual store or computed by a forward pass."""
        from safesail.collection.plan import prepare_contexts
        from safesail.model.lm import batches_by_length
        from safesail.model.saes import gather_residuals
        from safesail.model.sites import Site

        prepare_contexts(self.engine, self.lm, max_tokens)
        with Session(self.engine) as session:
            rows = list(session.exec(select(Context).order_by(Context.text_id)))
        contexts = [c.token_ids for c in rows]
        sample = _sample_tokens(contexts, config.max_tokens, config.seed)
        sites = {layer: Site(layer, "resid_post") for layer in layers}
        store = self.residual_store()
        if store is None or not store.covers(list(sites.values())):
            return gather_residuals(self.lm, [contexts[i] for i in sample], layers, TRAIN_BATCH)
        batches = batches_by_length([contexts[i] for i in sample], TRAIN_BATCH)
        order = [rows[sample[i]].text_id for batch in batches for i in batch]
        return {layer: store.texts(order, site) for layer, site in sites.items()}

    # -- the residual store ---------------------------------------------------------------------
    @property
    def residuals_folder(self) -> Path:
        from safesail.collection.residuals import FOLDER

        return self.config.workspace / FOLDER

    def cache_residuals(
        self, layers: Sequence[int], config: CollectConfig | None = None, *, progress: bool = True
    ) -> ResidualStore:
        """One forward pass over the corpus, keeping the residuals after each of `layers`'
        blocks on disk for training and collection (safesail.collection.residuals)."""
        from safesail.collection.residuals import build_store
        from safesail.model.sites import Site

        sites = [Site(layer, "resid_post") for layer in sorted(set(layers))]
        return build_store(
            self.engine, self.lm, self.residuals_folder, sites, config, progress=progress
        )

    def residual_store(self) -> ResidualStore | None:
        """The complete residual store of this corpus and model, if one was cached."""
        from safesail.collection.residuals import open_store

        if not self.residuals_folder.exists():
            return None
        return open_store(self.engine, self.lm, self.residuals_folder)

    def drop_residuals(self) -> bool:
        from safesail.collection.residuals import drop_store

        return drop_store(self.residuals_folder)

    def add_sae(
        self,
        path: Path,
        *,
        layer: int | None = None,
        sae_id: str | None = None,
        release: str | None = None,
    ) -> str:
        from safesail.model.saes import register_sae

        with session_scope(self.engine) as session:
            record = register_sae(
                session,
                lambda: self.lm,  # loaded only once the SAE's files pass
                path,
                source="pretrained" if release else "disk",
                layer=layer,
                sae_id=sae_id,
                release=release,
            )
            return record.id

    def add_pretrained(self, release: str, name: str, *, layer: int | None = None) -> str:
        from safesail.model.saes import add_pretrained

        path = add_pretrained(release, name, self.config.sae_dir)
        return self.add_sae(path, layer=layer, release=release)

    def saes(self) -> list[SaeRecord]:
        with Session(self.engine) as session:
            return list(session.exec(select(SaeRecord).order_by(SaeRecord.id)))

    # -- collection, selection, triage ----------------------------------------------------------
    def collect(
        self,
        config: CollectConfig | None = None,
        *,
        sae_ids: Sequence[str] | None = None,
        progress: bool = True,
    ) -> list[str]:
        from safesail.collection.collect import collect
        from safesail.model.saes import load_sae

        if not self.saes():
            raise SafesailError(
                "no SAEs in this workspace: run `safesail sae train` or `safesail sae add`"
            )
        load = functools.partial(load_sae, device=self.config.device, dtype=self.config.dtype)
        store = self.residual_store()
        return collect(
            self.engine, self.lm, load, config, sae_ids=sae_ids, progress=progress, store=store
        )

    def select(
        self,
        *,
        override: str | None = None,
        config: SelectionConfig | None = None,
        among: Sequence[str] | None = None,
    ) -> list[SaeRecord]:
        """Score every collected SAE for concept-specific interpretability and select the best
        by ``config.rank_by``; with ``among``, the best of those (the configuration search of
        Safe-SAIL's protocol: the chosen configuration's SAEs at other layers are scored, never
        chosen)."""
        from safesail.collection.chunks import text_max_matrix
        from safesail.model.saes import load_sae
        from safesail.selection.contrastive import stored_pre_explanation
        from safesail.selection.core_metrics import ensure_core
        from safesail.selection.score import choose_sae, rank_saes, score_sae, stored_score

        records = [r for r in self.saes() if r.collected]
        if not records:
            raise SafesailError("no collected SAEs: run `safesail collect` first")
        if override and override not in {r.id for r in records}:
            raise SafesailError(
                f"cannot select '{override}': not a collected SAE ({', '.join(r.id for r in records)})"
            )
        eligible = [r.id for r in records if among is None or r.id in among]
        if not eligible:
            raise SafesailError(f"none of {', '.join(among or ())} is a collected SAE")
        config = config or SelectionConfig()
        concepts = self._concepts_by_text()
        # an SAE's scores depend on its weights (fixed), the corpus' labels and the config:
        # with the same two, a rerun reads them back (the protocol scores the search twice)
        fingerprint = hashlib.sha256(
            json.dumps([asdict(config), sorted(concepts.items())], default=sorted).encode()
        ).hexdigest()[:16]
        scores, pre, pairs = {}, {}, None
        for record in records:
            if (record.selection or {}).get("fingerprint") == fingerprint:
                scores[record.id] = stored_score(record.selection_score, record.selection)
                pre[record.id] = record.selection["pre_explanation"]
                continue
            text_ids, matrix = text_max_matrix(self.engine, record.id)
            scores[record.id] = score_sae(
                matrix,
                [concepts[t] for t in text_ids],
                self.taxonomy.safety_concepts(),
                config,
            )
            pre[record.id], pairs = stored_pre_explanation(
                self.engine, text_ids, matrix, self.taxonomy.safety_concepts(), pairs
            )
        ranking = rank_saes(scores)
        chosen = override or choose_sae(scores, pre, config.rank_by, eligible)
        with session_scope(self.engine) as session:
            for sae_id, score in ranking:
                record = session.get(SaeRecord, sae_id)
                record.selection_score = float(score.score)
                record.selection = {
                    "fingerprint": fingerprint,
                    "concepts": {c.concept: c._asdict() for c in score.concepts},
                    "skipped": score.skipped,
                    "pre_explanation": pre[sae_id],
                    "rank_by": "override" if override else config.rank_by,
                }
                record.selected = sae_id == chosen
                session.add(record)
            set_meta(session, "selected_sae", chosen)
        ensure_core(self, self.lm, load_sae)  # measured once per SAE, kept across reruns
        return [r for r in self.saes() if r.id in scores]

    @property
    def selected_sae(self) -> str | None:
        with Session(self.engine) as session:
            return selected_sae(session)

    def triage(
        self, config: TriageConfig | None = None, *, sae_id: str | None = None
    ) -> dict[str, int]:
        """Score every feature of an SAE (default: the selected one) per concept and mark the
        safety candidates; returns, and stores on the SAE's record, the candidates per concept.

        Text-level triage first (where the feature fires: enough of its texts carry the
        concept), then, per text-level candidate, what it fires on (its firing rate and the
        words its contexts peak on). A feature the text-level gates turn away still becomes a
        candidate when most of its top contexts peak on one concept's term and it passes the
        same token rules (the term path, ``TriageConfig.term_path_share``): a reader labels by
        the marked tokens, and a feature firing on " CHARACTER" in four persona set-ups is a
        jailbreak feature that four texts cannot prove. Every feature that is not a candidate
        keeps the reason.
        """
        from safesail.collection.chunks import concept_token_counts, text_max_matrix
        from safesail.features.examples import examples_of
        from safesail.selection.metrics import BENIGN
        from safesail.triage.text import (
            candidates_for,
            feature_selectivity,
            text_rejections,
            triage,
        )
        from safesail.triage.tokens import (
            contrast_firing_rate,
            peaks_of,
            term_concept,
            token_rejection,
        )

        sae_id = sae_id or require_selected_sae(self.engine)
        with Session(self.engine) as session:
            record = session.get(SaeRecord, sae_id)
            if record is None or not record.collected:
                raise SafesailError(f"cannot triage '{sae_id}': not a collected SAE")
        config = config or TriageConfig()
        text_ids, matrix = text_max_matrix(self.engine, sae_id)
        concepts = self._concepts_by_text()
        taxonomy = self.taxonomy
        selectivity = feature_selectivity(
            matrix,
            [concepts[t] for t in text_ids],
            taxonomy.safety_concepts(),
            config.fire_fraction,
            config.contrast,
        )
        text_level = {c.feature: c for c in triage(selectivity, config)}
        reasons = text_rejections(selectivity, config)
        counts = concept_token_counts(
            self.engine, sae_id, concepts, [*selectivity.concepts, BENIGN]
        )
        outside = {
            name: contrast_firing_rate(counts, name, config.contrast)
            for name in selectivity.concepts
        }
        best = np.argmax(selectivity.auroc, axis=0)
        term_path_on = config.term_path_share < 1.0
        with session_scope(self.engine) as session:
            # columns, not Feature objects: at 65k features the rows and their blobs are GBs
            rows = session.exec(
                select(Feature.index, Feature.firing_rate, Feature.examples).where(
                    Feature.sae_id == sae_id
                )
            ).all()
            indices = [int(index) for index, _, _ in rows]
            mean_rate = float(np.mean([rate for _, rate, _ in rows])) if rows else 0.0
            examples = {
                int(f): examples_of(blob)
                for f, _, blob in rows
                if f in text_level or (term_path_on and blob)
            }
            del rows
            wanted = {e.text_id for exs in examples.values() for e in exs}
            tokens = {
                text_id: toks
                for part in chunked(sorted(wanted))
                for text_id, toks in session.exec(
                    select(Context.text_id, Context.tokens).where(Context.text_id.in_(part))
                )
            }
            term_path: dict[int, str] = {}
            for f in sorted(set(examples) - set(text_level)):
                peaks = peaks_of(examples[f], tokens, taxonomy.keywords_at)
                concept = term_concept(peaks, config.term_path_share)
                if concept in outside and not token_rejection(
                    float(outside[concept][f]), peaks, config, mean_rate
                ):
                    term_path[f] = concept
            for f in term_path:
                reasons.pop(f, None)
            for f, named in text_level.items():
                concept = named.concept
                # the term rule needs a lexicon: only for concepts the taxonomy gives words
                words = taxonomy.concepts[concept].keywords + taxonomy.concepts[concept].terms
                terms = taxonomy.keywords_at if words else None
                peaks = peaks_of(examples[f], tokens, terms)
                if reason := token_rejection(float(outside[concept][f]), peaks, config, mean_rate):
                    reasons[f] = reason
            text_level |= candidates_for(selectivity, term_path, config)
            verdicts = []
            for f in indices:
                # a token-level rejection keeps the concept (and AUROC) it was rejected for
                named = text_level.get(f)
                cand = named if f not in reasons else None
                verdicts.append(
                    {
                        "sae_id": sae_id,
                        "index": f,
                        "candidate": cand is not None,
                        "triage_reason": reasons.get(f),
                        "concept": named.concept if named else selectivity.concepts[best[f]],
                        "safety_score": float(cand.score) if cand else 0.0,
                        "auroc": float(named.auroc if named else selectivity.auroc[best[f], f]),
                        "precision": float(cand.precision) if cand else None,
                    }
                )
            if verdicts:  # one bulk UPDATE by primary key
                session.execute(update(Feature), verdicts)
            kept = [c for f, c in text_level.items() if f not in reasons]
            found = dict(Counter(c.concept for c in kept).most_common())
            record = session.get(SaeRecord, sae_id)
            record.triage = found
            session.add(record)
        return found

    def configuration_saes(self) -> list[SaeRecord]:
        """The selected SAE's configuration (architecture, width, k, site) at every layer it
        is collected at, shallowest first, one SAE per layer (the selected one on its own):
        what the protocol triages and the landscape shows."""
        from safesail.model.saes import site_of

        chosen = self._selected_record()
        if chosen is None:
            return []

        def configuration(r: SaeRecord) -> tuple[str, int, int | None, str]:
            return (r.architecture, r.d_sae, r.k, site_of(r).kind)

        same = {
            r.layer: r
            for r in self.saes()
            if r.collected and r.layer != chosen.layer and configuration(r) == configuration(chosen)
        }
        same[chosen.layer] = chosen
        return [same[layer] for layer in sorted(same)]

    def landscape(self) -> dict[str, dict[str, int]]:
        """Candidates per concept at each layer of the selected configuration that triage has
        run on (``status --json``'s ``landscape``, keyed by the layer as a string)."""
        return {str(r.layer): r.triage for r in self.configuration_saes() if r.triage is not None}

    def _selected_record(self) -> SaeRecord | None:
        return next((r for r in self.saes() if r.selected), None)

    def train_configuration(
        self, layers: Sequence[int], config: TrainConfig | None = None
    ) -> list[str]:
        """Train the selected SAE's configuration at each of ``layers`` that lacks it
        (Safe-SAIL's protocol: one configuration, searched on one layer, applied to all)."""
        chosen = self._selected_record()
        if chosen is None:
            raise SafesailError("no SAE selected: run `safesail select` first")
        if chosen.k is None or chosen.architecture != "topk":
            raise SafesailError(
                f"the selected SAE {chosen.id} is a {chosen.architecture} SAE; only TopK "
                "configurations are trained here (add SAEs for other layers with `safesail sae add`)"
            )
        specs = [
            SaeSpec(layer, chosen.d_sae, chosen.k) for layer in layers if layer != chosen.layer
        ]
        return self.train_saes(specs, config)

    def _concepts_by_text(self) -> dict[int, list[str]]:
        with Session(self.engine) as session:
            return corpus_concepts(session)

    # -- reporting ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The `safesail status --json` object (its keys: safesail.status)."""
        from safesail.status import workspace_status

        return workspace_status(self)
