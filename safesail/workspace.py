"""The Python API other rooms build on: one object per workspace, one method per pipeline step.

Each step reads its inputs from the database and writes its results back in a transaction, so
steps can be rerun (idempotent) and interrupted (resumable) independently.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func
from sqlmodel import Session, select

from safesail.config import (
    DEFAULT_SAES,
    EMBEDDED_MODEL,
    CollectConfig,
    SaeSpec,
    TrainConfig,
    WorkspaceConfig,
)
from safesail.db.paths import TAXONOMY_PATH, rebase_paths
from safesail.db.queries import check_model, require_saes, require_selected_sae, selected_sae
from safesail.db.tables import (
    Context,
    CorpusText,
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
        if config.db_url is None:  # the database travels with the folder: so do its own paths
            with session_scope(self.engine) as session:
                rebase_paths(session, config.workspace)
        with Session(self.engine) as session:
            stored = get_meta(session, "model")
        if model_name:
            check_model(stored, model_name)
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
            stored = get_meta(session, TAXONOMY_PATH)
        return Taxonomy.load(Path(stored) if stored else None)

    def use_taxonomy(self, path: Path) -> Taxonomy:
        taxonomy = Taxonomy.load(path)
        with session_scope(self.engine) as session:
            set_meta(session, TAXONOMY_PATH, str(path.resolve()))
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
        """The seeded training sample's residuals (safesail.model.training), read from the
        residual store when it holds the layers."""
        from safesail.collection.plan import prepare_contexts
        from safesail.model.training import training_residuals

        prepare_contexts(self.engine, self.lm, max_tokens)
        with Session(self.engine) as session:
            rows = session.exec(
                select(Context.text_id, Context.token_ids).order_by(Context.text_id)
            ).all()
        contexts = [(int(text_id), list(ids)) for text_id, ids in rows]
        return training_residuals(self.lm, contexts, self.residual_store(), layers, config)

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

        require_saes(self.engine)
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
        by ``config.rank_by`` (safesail.selection.run); with ``among``, the best of those (the
        configuration search of Safe-SAIL's protocol: the chosen configuration's SAEs at other
        layers are scored, never chosen)."""
        from safesail.model.saes import load_sae
        from safesail.selection.core_metrics import ensure_core
        from safesail.selection.run import select_sae

        scored = select_sae(
            self, self._concepts_by_text(), override=override, config=config, among=among
        )
        ensure_core(self, self.lm, load_sae)  # measured once per SAE, kept across reruns
        return [r for r in self.saes() if r.id in scored]

    @property
    def selected_sae(self) -> str | None:
        with Session(self.engine) as session:
            return selected_sae(session)

    def triage(
        self, config: TriageConfig | None = None, *, sae_id: str | None = None
    ) -> dict[str, int]:
        """Score every feature of an SAE (default: the selected one) per concept and mark the
        safety candidates (safesail.triage.run); returns, and stores on the SAE's record, the
        candidates per concept."""
        from safesail.triage.run import triage_sae

        sae_id = sae_id or require_selected_sae(self.engine)
        return triage_sae(
            self.engine,
            self.taxonomy,
            self._concepts_by_text(),
            sae_id,
            config or TriageConfig(),
            self.config.memory_budget_bytes,
        )

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
        with Session(self.engine) as session:
            sae_id = selected_sae(session)
            return session.get(SaeRecord, sae_id) if sae_id is not None else None

    def train_configuration(
        self, layers: Sequence[int], config: TrainConfig | None = None
    ) -> list[str]:
        """Train the selected SAE's configuration at each of ``layers`` that lacks it
        (Safe-SAIL's protocol: one configuration, searched on one layer, applied to all)."""
        chosen = self._selected_record()
        if chosen is None:
            raise SafesailError("no SAE selected — run `safesail select` first")
        if chosen.k is None or chosen.architecture != "topk":
            raise SafesailError(
                f"the selected SAE {chosen.id} is a {chosen.architecture} SAE; only TopK "
                "configurations are trained here — add SAEs for other layers with `safesail sae add`"
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
