"""`safesail label listen`: a small HTTP endpoint for Label Studio's annotation webhooks that
runs `pull` on each one, so labels and the learner follow the annotators without polling."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from annotation.client import ClientConfig, ensure_project, open_client, pull

ACTIONS = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"]


def webhook_server(ws: Any, port: int, config: ClientConfig) -> ThreadingHTTPServer:
    """Register the webhook (once) and return the endpoint, not yet serving; pulls never
    overlap."""
    client = open_client(ws, config)
    project_id, _ = ensure_project(ws, client)
    url = f"http://127.0.0.1:{port}/webhook"
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
    lock = threading.Lock()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)) or 0)
            self.send_response(200)
            self.end_headers()
            action = (json.loads(body or b"{}") or {}).get("action")
            if action in ACTIONS:
                with lock:
                    r = pull(ws, config=config, progress=False)
                print(
                    f"{action}: {r.new} new, {r.updated} changed; learner {r.learner}", flush=True
                )

        def log_message(self, *args: Any) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Hook)


def listen(ws: Any, port: int, config: ClientConfig, progress: bool = True) -> None:
    """Serve the webhook endpoint until interrupted."""
    httpd = webhook_server(ws, port, config)
    print(
        f"listening for Label Studio webhooks on http://127.0.0.1:{port}/webhook (Ctrl-C to stop)",
        flush=True,
    )
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()
