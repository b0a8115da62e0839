"""How this room reaches Label Studio: the SDK client with retries and one-line errors, and the
credentials of an external server or the workspace's managed one.

Every call to Label Studio goes through `Client.call`, so a server that is down, slow or
refusing the token reads the same everywhere: transient failures are retried with exponential
backoff, everything else (and the last failure) becomes one line that says how to resume.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from annotation import server
from safesail.db.contracts import Workspace
from safesail.errors import SafesailError

T = TypeVar("T")


@dataclass(frozen=True)
class ClientConfig:
    """How the app talks to Label Studio."""

    url: str | None = None
    """An external Label Studio (default: the workspace's managed server)."""
    token_file: Path | None = None
    """0600 file holding the external server's API token (or $LABEL_STUDIO_API_KEY)."""
    retries: int = 4
    """Attempts after the first on connection errors, timeouts, 429 and 5xx."""
    backoff: float = 1.0
    """Seconds before the first retry, doubled each time."""
    timeout: float = 60.0
    """Seconds per HTTP request."""
    import_batch: int = 1000
    """Tasks per import request."""

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0 or self.timeout <= 0 or self.import_batch < 1:
            raise ValueError("need retries >= 0, backoff >= 0, timeout > 0, import_batch >= 1")


class Client:
    """The SDK client plus retries with exponential backoff and one-line errors."""

    def __init__(self, url: str, token: str, config: ClientConfig) -> None:
        from label_studio_sdk import LabelStudio

        self.url, self.config = url.rstrip("/"), config
        self.sdk = LabelStudio(
            base_url=self.url, api_key=token, timeout=config.timeout, max_retries=0
        )

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs), retried on transient failures; anything else is one line."""
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        delay = self.config.backoff
        for attempt in range(self.config.retries + 1):
            try:
                return fn(*args, **kwargs)
            except (httpx.TransportError, ApiError) as exc:
                code = getattr(exc, "status_code", None)
                if code in (401, 403):
                    raise SafesailError(
                        f"Label Studio at {self.url} refused the API token ({code}) — check "
                        "LABEL_STUDIO_API_KEY or --ls-token-file"
                    ) from None
                transient = code is None or code == 429 or code >= 500
                if not transient:
                    body = str(getattr(exc, "body", exc))[:200]
                    raise SafesailError(f"Label Studio at {self.url} refused the request ({code} {body}) — check "
                        "--ls-url points at a Label Studio of a matching version") from None
                if attempt == self.config.retries:
                    what = f"HTTP {code}" if code else type(exc).__name__
                    raise SafesailError(
                        f"Label Studio at {self.url} is unreachable or failing ({what}) after "
                        f"{attempt + 1} attempts — start it (`safesail labelstudio up`) and rerun: "
                        "the run resumes where it stopped"
                    ) from None
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")


def _token_from_file(path: Path) -> str:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SafesailError(f"token file {path} is readable by others — chmod 600 it")
    return path.read_text().strip()


def open_client(ws: Workspace, config: ClientConfig | None = None) -> Client:
    """A client for the external server (url + token) or the workspace's managed one."""
    config = config or ClientConfig()
    if config.url:
        if config.token_file:
            token = _token_from_file(Path(config.token_file))
        elif os.environ.get("LABEL_STUDIO_API_KEY"):
            token = os.environ["LABEL_STUDIO_API_KEY"]
        else:
            raise SafesailError(
                "--ls-url was given without a token — set LABEL_STUDIO_API_KEY or pass --ls-token-file"
            )
        return Client(config.url, token, config)
    p = server.paths(ws.config.workspace)
    if not p.state.exists():
        raise SafesailError(
            "Label Studio is not started for this workspace — run `safesail labelstudio up` "
            "(or pass --ls-url for an existing server)"
        )
    url = json.loads(p.state.read_text())["url"]
    return Client(url, server.credentials(ws.config.workspace)["token"], config)
