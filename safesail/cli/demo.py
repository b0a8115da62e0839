"""`safesail demo`: the whole main job on the embedded default, the core's steps in Safe-SAIL's
order, then each room's step in plugin order; every step skips what an earlier run finished, so
a failed demo is rerun rather than restarted."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from safesail.cli.flags import config_from_args
from safesail.cli.handlers import part_checks, sae_specs
from safesail.cli.show import print_candidates, print_landscape, print_ranking
from safesail.config import TrainConfig
from safesail.errors import SafesailError

if TYPE_CHECKING:
    from safesail.workspace import Workspace

DEMO_TRAIN_FLAGS = ("epochs",)
"""TrainConfig fields of `safesail demo`."""


class StepTimes:
    """Wall time of each demo step, printed at the end: the demo has a time budget, and a
    person deciding what to shrink needs to see where it goes."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.steps.append((name, time.perf_counter() - start))

    def report(self) -> str:
        total = sum(seconds for _, seconds in self.steps)
        lines = [f"  {name:<34}{seconds:>8.1f} s" for name, seconds in self.steps]
        return "\n".join(["time per step:", *lines, f"  {'total':<34}{total:>8.1f} s"])


def _protocol_pending(ws: Workspace, search: list[str], layers: list[int]) -> bool:
    """Whether some training or collection of the protocol is still to do (a rerun of a demo
    that got past it must not run the forward pass again for nothing)."""
    collected = {r.id for r in ws.saes() if r.collected}
    if not set(search) <= collected:
        return True
    return not set(layers) <= {r.layer for r in ws.configuration_saes()}


def demo(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    """The main job on the embedded default, as Safe-SAIL runs it: corpus; the configuration
    search (candidates trained on one layer, collected, the best chosen by the pre-explanation
    metric); that configuration trained and collected at every layer of ``--layers`` and each
    triaged (the landscape across depth); then each room's step (labeling, explaining, causal
    checks, exports, app) in plugin order on the selected SAE."""
    print(f"safesail demo: workspace {ws.config.workspace.resolve()}")
    for check in part_checks(args, corpus=args.corpus is None, tests=False, servers=False):
        if not check.ok:  # stop now with the fix, not at the step that needs the part
            raise SafesailError(f"{check.part}: {check.detail} — fix: {check.fix}")
    times = StepTimes()
    with times.step("corpus"):
        if args.corpus:
            from safesail.corpus.files import load_corpus_file

            ws.add_corpus(load_corpus_file(args.corpus, ws.taxonomy))
        elif not ws.corpus_counts():
            ws.build_default_corpus(max_benign=args.max_benign, progress=progress)
    print(f"corpus: {ws.corpus_counts()}")
    specs = sae_specs(args.spec)
    search = [s.sae_id for s in specs]
    train = config_from_args(TrainConfig, args, DEMO_TRAIN_FLAGS)
    with times.step("residuals: one forward pass"):  # read back by every training and collection
        if _protocol_pending(ws, search, args.layers):
            ws.cache_residuals({s.layer for s in specs} | set(args.layers), progress=progress)
    with times.step("search: train candidates"):
        ws.train_saes(specs, train)
    with times.step("search: collect"):
        ws.collect(sae_ids=search, progress=progress)
    with times.step("search: select"):
        ws.select(among=search)
    with times.step("layers: train chosen configuration"):
        ws.train_configuration(args.layers, train)
    with times.step("layers: collect"):
        ws.collect(progress=progress)
    with times.step("layers: score"):
        ws.select(among=search)  # the layers' SAEs scored and measured; the choice stands
    ws.drop_residuals()  # a cache of ~2 GB on the default corpus; nothing later reads it
    with times.step("triage (every layer)"):
        layers = ws.configuration_saes()
        found = {record.id: ws.triage(sae_id=record.id) for record in layers}
    print("\nSAE ranking (Safe-SAIL's pre-explanation index chooses; * = selected):")
    print_ranking(ws)
    print_landscape(ws)
    selected = ws.selected_sae
    counts = found[selected]
    print(f"\n{sum(counts.values())} safety candidates in {selected}: {counts}")
    print("top candidate per concept, with its top contexts ([[peak token]]):")
    print_candidates(ws)
    for record in layers:
        if record.id != selected:
            print(f"\ntop candidates of {record.id} (layer {record.layer}):")
            print_candidates(ws, record.id, contexts=2)
    for plugin in args.plugins:
        if not plugin.demo:
            continue
        try:
            with times.step(plugin.name):
                code = plugin.demo(ws, args, progress)
            if code:
                return code
        except SafesailError as exc:
            again = f"`{plugin.resume(args)}` reruns only this step; " if plugin.resume else ""
            raise SafesailError(
                f"demo step '{plugin.name}' failed ({exc}); earlier steps are kept — fix that, then "
                f"{again}rerunning the demo skips the finished ones"
            ) from None
    print(f"\n{times.report()}")
    print(
        f"\nworkspace: {ws.config.workspace.resolve()}   (safesail status --json --workspace {ws.config.workspace})"
    )
    return 0
