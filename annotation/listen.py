"""`safesail label listen`: a small HTTP endpoint for Label Studio's annotation webhooks that
runs `pull` on each one, so labels and the learner follow the annotators without polling."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from annotation.project import ensure_project
from annotation.pull import pull
from annotation.server import ensure_local_webhooks
from annotation.transport import ClientConfig, open_client
from safesail.db.contracts import Workspace
from safesail.errors import SafesailError
from safesail.plugins import learner_factory

ACTIONS = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"]


def webhook_server(
    ws: Workspace, port: int, config: ClientConfig, progress: bool = False
) -> ThreadingHTTPServer:
    """Bind the endpoint first (a busy port fails before anything changes on the server), then
    let the managed Label Studio reach it (its SSRF ban on local addresses is turned off for the
    listen path only, restarting it if needed) and register the webhook (once); returns the
    endpoint, bound but not yet serving; pulls never overlap."""
    lock = threading.Lock()
    make_learner = learner_factory()  # found once, built anew on each pull from its labels

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)) or 0)
            self.send_response(200)
            self.end_headers()
            action = (json.loads(body or b"{}") or {}).get("action")
            if action in ACTIONS:
                with lock:
                    r = pull(ws, config=config, progress=False, make_learner=make_learner)
                print(
                    f"{action}: {r.new} new, {r.updated} changed; learner {r.learner}", flush=True
                )

        def log_message(self, *args: Any) -> None:
            pass

    try:
        httpd = ThreadingHTTPServer(("127.0.0.1", port), Hook)
    except OSError as exc:
        raise SafesailError(
            f"cannot listen on 127.0.0.1:{port} ({exc.strerror}) — pass another --listen-port"
        ) from None
    try:
        if not config.url:
            ensure_local_webhooks(ws.config.workspace, ws.config.cache_dir, progress)
        _register(ws, config, f"http://127.0.0.1:{port}/webhook")
    except BaseException:
        httpd.server_close()
        raise
    return httpd


def _register(ws: Workspace, config: ClientConfig, url: str) -> None:
    client = open_client(ws, config)
    project_id, _ = ensure_project(ws, client)
    hooks = client.call(lambda: list(client.sdk.webhooks.list(project=str(project_id))))
    if not any(h.url == url for h in hooks):
        client.call(
            client.sdk.webhooks.create,
            url=url,
            project=project_id,
            send_payload=False,
            send_for_all_actions=False,
            actions=ACTIONS,
        )


def listen(ws: Workspace, port: int, config: ClientConfig, progress: bool = True) -> None:
    """Serve the webhook endpoint until interrupted."""
    httpd = webhook_server(ws, port, config, progress)
    print(
        f"listening for Label Studio webhooks on http://127.0.0.1:{port}/webhook (Ctrl-C to stop)",
        flush=True,
    )
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()
