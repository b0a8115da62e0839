"""Unit tests of the labeling loop's tricky parts: kappa, adjudication, result validation,
escaping of corpus text in the heatmap, and the label config."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from annotation.agreement import Answer, adjudicate, cohen_kappa, fleiss_kappa, kappa_per_concept
from annotation.label_interface import label_config
from annotation.pull import parse_result
from annotation.push import wants_two
from annotation.tasks import heatmap_html
from safesail.taxonomy import Taxonomy


@pytest.mark.parametrize("seed", range(5))
def test_cohen_kappa_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 3, 40)
    b = np.where(rng.random(40) < 0.6, a, rng.integers(0, 3, 40))
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))


def test_cohen_kappa_undefined_when_both_constant():
    assert cohen_kappa([0, 0, 0], [0, 0, 0]) is None
    assert cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)


def test_fleiss_kappa_textbook_example():
    # Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories -> 0.210
    counts = np.array(
        [
            [0, 0, 0, 0, 14],
            [0, 2, 6, 4, 2],
            [0, 0, 3, 5, 6],
            [0, 3, 9, 2, 0],
            [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0],
            [3, 2, 6, 3, 0],
            [2, 5, 3, 2, 2],
            [6, 5, 2, 1, 0],
            [0, 2, 2, 3, 7],
        ]
    )
    assert fleiss_kappa(counts) == pytest.approx(0.210, abs=5e-4)


def test_kappa_per_concept_uses_only_overlap_items():
    items = [
        [["violence"], ["violence"]],
        [["benign"], ["violence"]],
        [["cybercrime"], ["cybercrime"]],
        [["benign"], ["benign"]],
        [["violence"]],  # one annotator: not an agreement item
    ]
    out = kappa_per_concept(items, ["violence", "cybercrime", "benign", "fraud"])
    assert out["violence"]["items"] == 4
    assert out["violence"]["cohen"] == pytest.approx(cohen_kappa_score([1, 0, 0, 0], [1, 1, 0, 0]))
    assert out["fraud"]["cohen"] is None  # never named: undefined, not 1.0
    # two raters: Fleiss and Cohen differ only in how chance agreement is estimated
    assert out["cybercrime"]["fleiss"] == pytest.approx(1.0)


def _a(who, concepts, conf, order):
    return Answer(who, concepts, conf, f"{who} says {concepts}", order)


def test_adjudication_rule():
    single = adjudicate([_a("x", ["fraud"], 2, 0)])
    assert single.concepts == ["fraud"] and single.reason == "single"
    agreed = adjudicate([_a("x", ["fraud", "privacy"], 2, 0), _a("y", ["privacy", "fraud"], 4, 1)])
    assert agreed.agreed and agreed.confidence == 3 and set(agreed.concepts) == {"fraud", "privacy"}
    confident = adjudicate([_a("x", ["benign"], 5, 0), _a("y", ["violence"], 3, 1)])
    assert confident.concepts == ["benign"] and not confident.agreed
    tie = adjudicate(
        [_a("x", ["benign"], 4, 0), _a("y", ["violence"], 4, 1), _a("z", ["terror"], 4, 2)]
    )
    assert tie.concepts == ["violence", "terror"] and tie.reason.startswith("tie: union")
    plain_tie = adjudicate([_a("y", ["uninterpretable"], 3, 1), _a("x", ["benign"], 3, 0)])
    assert plain_tie.concepts == ["benign"]  # earliest answer wins when no safety concept


VALUES = Taxonomy.load().label_values()


def _raw(choices=None, rating=None, text=None, **extra):
    result = []
    if choices is not None:
        result.append({"from_name": "concepts", "value": {"choices": choices}})
    if rating is not None:
        result.append({"from_name": "confidence", "value": {"rating": rating}})
    if text is not None:
        result.append({"from_name": "explanation", "value": {"text": [text]}})
    return {"result": result, **extra}


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (_raw(["violence"], 4, "Fires on stabbings."), None),
        (_raw(["violence"], 4), None),  # the sentence is optional
        (_raw(["telepathy"], 4), "unknown concept"),
        (_raw(None, 4), "no concept"),
        (_raw(["violence"], None), "confidence"),
        (_raw(["violence"], 9), "confidence"),
        (_raw(["benign", "violence"], 3), "combined"),
        (_raw(["violence"], 3, was_cancelled=True), "skipped"),
        ({"result": [{"from_name": "mood", "value": {}}, *_raw(["fraud"], 2)["result"]]}, "mood"),
    ],
)
def test_parse_result_flags_problems(raw, problem):
    fields, found = parse_result(raw, VALUES)
    if problem is None:
        assert found is None and fields["concepts"] == ["violence"]
    else:
        assert found is not None and problem in found


def test_heatmap_escapes_every_token():
    tokens = [
        "Hi",
        " <script>alert(1)</script>",
        '" onmouseover="x',
        " &amp;",
        "<img src=x onerror=y>",
    ]
    out = heatmap_html(tokens, [0.0, 5.0, 2.0, 0.0, 1.0], scale=5.0)
    assert "<script" not in out and "<img" not in out and 'onmouseover="x' not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out and "&amp;amp;" in out
    assert out.count("<span") == len(tokens)
    assert "rgba(255,90,0,1.00)" in out  # the peak is fully shaded


def test_label_config_is_valid_xml_with_every_label_value():
    taxonomy = Taxonomy.load()
    root = ET.fromstring(label_config(taxonomy))
    choices = root.find("Choices")
    assert [c.get("alias") for c in choices] == taxonomy.label_values()
    shown = {c.get("alias"): c.get("value") for c in choices}
    assert (
        shown["benign"] == "not safety-related" and shown["uninterpretable"] == "not interpretable"
    )
    assert choices.get("choice") == "multiple"
    assert root.find("Rating").get("toName") == root.find("HyperText").get("name")


def test_overlap_share_is_stable_and_close_to_the_fraction():
    keys = [f"L1-w64-k4:{i}" for i in range(2000)]
    share = np.mean([wants_two(k, 0.2) for k in keys])
    assert 0.17 < share < 0.23
    assert [wants_two(k, 0.2) for k in keys[:50]] == [wants_two(k, 0.2) for k in keys[:50]]
    assert not any(wants_two(k, 0.0) for k in keys) and all(wants_two(k, 1.0) for k in keys)


def test_login_line_shows_no_password(tmp_path):
    """What `make demo` and `labelstudio up` print: the username and where the 0600 credentials
    file is, never the password or the API token."""
    import os
    import stat
    from types import SimpleNamespace

    from annotation import server
    from annotation.plugin import login_line
    from safesail.config import WorkspaceConfig

    ws = SimpleNamespace(config=WorkspaceConfig(tmp_path, None))
    line = login_line(ws, "http://127.0.0.1:8080")
    creds = server.credentials(tmp_path)
    path = server.paths(tmp_path).credentials
    assert creds["password"] not in line and creds["token"][:8] not in line
    assert creds["username"] in line and str(path) in line
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_ssrf_ban_stays_on_unless_listen_asks(tmp_path, monkeypatch):
    """Label Studio's SSRF protection (banned private/loopback subnets) is only turned off for a
    server started for `label listen`; an inherited setting does not leak in either."""
    from annotation import server

    for prefix in ("LABEL_STUDIO_", "HEARTEX_", ""):  # Label Studio reads all three
        monkeypatch.setenv(f"{prefix}USE_DEFAULT_BANNED_SUBNETS", "false")
    p = server.paths(tmp_path)
    creds = server.credentials(tmp_path)
    assert server.ServerConfig().local_webhooks is False
    assert not any(k.endswith("USE_DEFAULT_BANNED_SUBNETS") for k in server._server_env(p, creds))
    env = server._server_env(p, creds, local_webhooks=True)
    assert env["LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS"] == "false"


def test_listen_restarts_a_server_that_bans_local_webhooks(tmp_path, monkeypatch):
    import json

    from annotation import server

    p = server.paths(tmp_path)
    p.root.mkdir(parents=True)
    p.state.write_text(json.dumps({"pid": 1, "url": "u", "port": 18080, "host": "127.0.0.1"}))
    started = []

    def fake_up(workspace, cache_dir, config, progress):
        started.append(config)
        state = {"pid": 2, "url": "u", "port": config.port, "local_webhooks": config.local_webhooks}
        p.state.write_text(json.dumps(state))

    monkeypatch.setattr(server, "status", lambda ws: server.ServerState("u", 1, True, True))
    monkeypatch.setattr(server, "down", lambda ws: True)
    monkeypatch.setattr(server, "up", fake_up)
    assert server.ensure_local_webhooks(tmp_path, tmp_path, progress=False) is True
    assert started == [server.ServerConfig(port=18080, host="127.0.0.1", local_webhooks=True)]
    assert server.allows_local_webhooks(tmp_path)
    assert server.ensure_local_webhooks(tmp_path, tmp_path, progress=False) is False
    assert len(started) == 1  # already allowed: no second restart
