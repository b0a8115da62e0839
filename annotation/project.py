"""The workspace's Label Studio project and this room's summary record.

One project per workspace and SAE, named so it can be found again: a crash after creating it
must not create a second one on the rerun. The summary (`AnnotationSummary`, Meta "annotation")
says which project that is and what the last push and pull found; status, the app and the
exports read it.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlmodel import Session

from annotation.label_interface import label_config
from annotation.transport import Client
from safesail.db.contracts import Workspace, read_record, write_record
from safesail.db.labeling import AnnotationSummary
from safesail.db.queries import require_selected_sae
from safesail.db.tables import session_scope
from safesail.errors import SafesailError


def project_title(ws: Workspace, sae_id: str) -> str:
    """Unique per workspace (path hash) and SAE; Label Studio allows 50 characters."""
    path = str(Path(ws.config.workspace).resolve())
    digest = hashlib.sha1(path.encode()).hexdigest()[:6]
    return f"safesail {Path(path).name[:14]} {sae_id[:18]} {digest}"


def update_summary(session: Session, **changes: Any) -> AnnotationSummary:
    """The stored summary with `changes` applied (the other fields kept), written back."""
    summary = replace(read_record(session, AnnotationSummary) or AnnotationSummary(), **changes)
    write_record(session, summary)
    return summary


def ensure_project(ws: Workspace, client: Client) -> tuple[int, str]:
    """The project's id and key ("<url>#<id>"): reused from the summary, found by title (a
    crash after creating it), or created."""
    from label_studio_sdk.core.api_error import ApiError

    sae_id = require_selected_sae(ws.engine)
    with Session(ws.engine) as session:
        known = read_record(session, AnnotationSummary) or AnnotationSummary()
    if known.url == client.url and known.sae_id == sae_id and known.project:
        try:
            client.call(client.sdk.projects.get, known.project)
            return known.project, f"{client.url}#{known.project}"
        except SafesailError as exc:
            if "404" not in str(exc):
                raise
        except ApiError:
            pass
    title = project_title(ws, sae_id)
    found = [p for p in client.call(lambda: list(client.sdk.projects.list())) if p.title == title]
    if found:
        project_id = found[0].id
    else:
        project = client.call(
            client.sdk.projects.create,
            title=title,
            description=f"safesail: label the features of SAE {sae_id} ({ws.config.workspace})",
            label_config=label_config(ws.taxonomy),
        )
        project_id = project.id
    with session_scope(ws.engine) as session:
        update_summary(session, url=client.url, project=project_id, sae_id=sae_id, title=title)
    return project_id, f"{client.url}#{project_id}"
