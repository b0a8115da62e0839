"""Streamlit helpers shared by the pages: where the workspace is, cached read-only queries,
the refresh control, and the "nothing yet" message that names the command to run."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st
from sqlalchemy.engine import Engine

from app import browse, frames, reads
from safesail.db.tables import masked_url

REFRESH_S = 15
"""Seconds a cached query stays fresh (and the auto-refresh period)."""


def settings() -> tuple[Path, str | None]:
    """Workspace folder and DB URL: `streamlit run main.py -- --workspace W [--db-url U]`, else
    $SAFESAIL_WORKSPACE / $SAFESAIL_DB_URL (as the CLI), else ./workspace."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--workspace", type=Path)
    parser.add_argument("--db-url")
    args, _ = parser.parse_known_args(sys.argv[1:])
    workspace = args.workspace or Path(os.environ.get("SAFESAIL_WORKSPACE", "workspace"))
    return workspace, args.db_url or os.environ.get("SAFESAIL_DB_URL")


QUERIES: dict[str, Callable[..., Any]] = {
    f.__name__: f
    for f in (
        reads.selected_sae,
        reads.model_name,
        reads.learner_state,
        reads.calibration_report,
        reads.sae_list,
        frames.coverage,
        frames.labels_per_day,
        frames.llm_cost,
        frames.cost_per_accepted,
        frames.labels_needed,
        frames.learner_curve,
        frames.label_distribution,
        frames.kappa,
        frames.reliability,
        frames.cascade_stages,
        frames.coverage_curve,
        browse.landscape,
        browse.sae_ranking,
        browse.feature_table,
    )
}
"""What a page may `query`, by name: each takes the engine first and returns typed records or
frames (picklable, as Streamlit's cache keeps them)."""


@st.cache_resource
def _engine(workspace: str, db_url: str | None) -> Engine | None:
    return reads.connect(Path(workspace), db_url)


def engine() -> Engine | None:
    """The workspace database, or None (a missing database is retried on the next run)."""
    workspace, db_url = settings()
    found = _engine(str(workspace), db_url)
    if found is None:
        _engine.clear()
    return found


def query(name: str, *args: Any) -> Any:
    """`QUERIES[name](engine, *args)`, cached for REFRESH_S seconds."""
    workspace, db_url = settings()
    return _query(str(workspace), db_url, name, *args)


@st.cache_data(ttl=REFRESH_S, show_spinner=False)
def _query(workspace: str, db_url: str | None, name: str, *args: Any) -> Any:
    return QUERIES[name](_engine(workspace, db_url), *args)


def sidebar() -> None:
    workspace, db_url = settings()
    st.sidebar.caption(f"workspace: `{masked_url(db_url) if db_url else workspace}`")
    if st.sidebar.button("Refresh now"):
        _query.clear()
    st.sidebar.toggle("Auto-refresh", value=True, key="auto_refresh")


def live(body: Callable[[], None]) -> None:
    """Run a page body, rerunning it every REFRESH_S seconds while auto-refresh is on, so the
    figures follow the labeling loop and the explainer as their rows land."""
    if st.session_state.get("auto_refresh", True):
        st.fragment(run_every=REFRESH_S)(body)()
    else:
        body()


def need(what: str, run: str) -> None:
    """The empty-state message: what is missing and which command makes it."""
    st.info(f"No {what} yet. Run `{run}` first (or `safesail demo`, which runs every step).")


def ready() -> bool:
    """True when the workspace has a database with a selected SAE; else says what to run."""
    eng = engine()
    if eng is None:
        workspace, _ = settings()
        st.info(
            f"No safesail workspace at `{workspace}` yet. Run `safesail demo --workspace "
            f"{workspace}` (or `corpus build`, `sae train`, `collect`, `select`, `triage`)."
        )
        return False
    if reads.selected_sae(eng) is None:
        need("selected SAE", "safesail collect && safesail select && safesail triage")
        return False
    return True


def page_path(name: str) -> Path:
    """A page file, as `st.switch_page` wants it."""
    return Path(__file__).parent / "views" / name
