"""The real app (`safesail app --background`) opened in headless Chromium: the overview's
figures render. The screenshot is kept in test-artifacts/app-overview.png."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from exports.synthetic import populate
from safesail.cli.main import main
from tests.conftest import copy_workspace, skip_or_fail

ARTIFACTS = Path(__file__).parents[2] / "test-artifacts"
CHROMIUM = next(
    (p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()),
    shutil.which("chromium"),
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_overview_in_chromium(triaged_ws, tmp_path, lm, capsys):
    if CHROMIUM is None:
        skip_or_fail("no chromium binary (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    ws = copy_workspace(triaged_ws, tmp_path / "ws", lm)
    populate(ws.engine, ws.selected_sae, ws.taxonomy.safety_concepts())
    args = ["app", "--workspace", str(ws.config.workspace), "--quiet"]
    port = _free_port()
    assert main([*args, "--background", "--port", str(port)]) == 0
    try:
        url = f"http://localhost:{port}"
        assert url in capsys.readouterr().out
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.goto(url)
            page.get_by_text("Coverage of safety candidates per concept").wait_for(timeout=60_000)
            charts = page.locator(".vega-embed canvas, .vega-embed svg")
            charts.nth(2).wait_for(timeout=60_000)  # coverage, labels per day, cost
            assert charts.count() >= 3
            assert page.get_by_text("human-labeled").count() >= 1
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "app-overview.png"), full_page=True)
            browser.close()
        assert (ARTIFACTS / "app-overview.png").stat().st_size > 10_000
    finally:
        assert main([*args, "--stop"]) == 0
    assert "stopped the app" in capsys.readouterr().out
    assert not (ws.config.workspace / "app.json").exists()
