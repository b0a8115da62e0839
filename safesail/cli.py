"""`safesail`: one command, a subcommand per pipeline step, one-line errors.

Heavy imports (torch, transformers, sae-lens) happen inside the steps, so `--help` and
`status` start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from safesail.config import (
    DEFAULT_SAES,
    CollectConfig,
    SaeSpec,
    TrainConfig,
    WorkspaceConfig,
    default_cache_dir,
)
from safesail.errors import SafesailError
from safesail.plugins import Plugin, load_plugins


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--workspace",
        type=Path,
        default=Path(os.environ.get("SAFESAIL_WORKSPACE", "workspace")),
        help="workspace folder (default: ./workspace or $SAFESAIL_WORKSPACE)",
    )
    common.add_argument(
        "--db-url",
        default=os.environ.get("SAFESAIL_DB_URL"),
        help="SQLAlchemy URL (default: sqlite in the workspace)",
    )
    common.add_argument(
        "--model",
        default=None,
        help="HF model name or local folder (default: the embedded SmolLM2)",
    )
    common.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="download/conversion cache (default: ~/.cache/safesail)",
    )
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    return common


def build_parser(plugins: list[Plugin] | None = None) -> argparse.ArgumentParser:
    plugins = load_plugins() if plugins is None else plugins
    common = _common()
    parser = argparse.ArgumentParser(prog="safesail", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    corpus = sub.add_parser("corpus", help="build or add to the corpus").add_subparsers(
        dest="action", required=True
    )
    build = corpus.add_parser(
        "build",
        parents=[common],
        help="build the default safety + benign corpus from packaged data",
    )
    build.add_argument("--max-benign", type=int, default=3000)
    build.add_argument(
        "--taxonomy", type=Path, help="concept taxonomy JSON (default: the packaged one)"
    )
    add = corpus.add_parser(
        "add", parents=[common], help="add your own corpus (JSONL, JSON, CSV, Parquet)"
    )
    add.add_argument("path", type=Path)
    add.add_argument("--text-field", default="text")
    add.add_argument("--concept-field", default="concept")
    corpus.add_parser("show", parents=[common], help="texts per concept")

    sae = sub.add_parser("sae", help="train, add or list SAEs").add_subparsers(
        dest="action", required=True
    )
    train = sae.add_parser("train", parents=[common], help="train TopK candidates with sae-lens")
    train.add_argument(
        "--spec", action="append", help="LAYER:WIDTH:K, repeatable (default: the demo candidates)"
    )
    train.add_argument("--epochs", type=float, help="passes over the training tokens")
    train.add_argument("--batch-size", type=int, help="activations per training step")
    sae_add = sae.add_parser(
        "add", parents=[common], help="add an SAE in sae-lens format or a pretrained release"
    )
    sae_add.add_argument("--path", type=Path, help="folder with cfg.json + sae_weights.safetensors")
    sae_add.add_argument("--release", help="sae-lens pretrained release (needs the hub)")
    sae_add.add_argument("--sae-id", help="SAE id inside the release")
    sae_add.add_argument(
        "--layer", type=int, help="block the SAE reads (default: from its hook name)"
    )
    sae_add.add_argument("--id", dest="record_id", help="id to give it here")
    sae.add_parser("list", parents=[common], help="candidate SAEs and their scores")

    collect = sub.add_parser(
        "collect", parents=[common], help="build the activation cache (resumable)"
    )
    collect.add_argument("--top-k", type=int, help="top-activating contexts kept per feature")
    collect.add_argument("--sae", action="append", help="only these SAE ids")

    select_ = sub.add_parser(
        "select", parents=[common], help="rank SAEs by concept-specific interpretability"
    )
    select_.add_argument("--sae", help="select this SAE instead of the best-scoring one")
    select_.add_argument("--contrast", choices=["rest", "benign"], help="contrast texts")

    triage = sub.add_parser(
        "triage", parents=[common], help="mark safety-relevant features of the selected SAE"
    )
    triage.add_argument(
        "--min-precision", type=float, help="Wilson lower bound of P(concept | fires)"
    )
    triage.add_argument("--min-support", type=int, help="concept texts the feature must fire on")
    triage.add_argument("--fire-fraction", type=float, help="fires = above this share of its max")
    triage.add_argument("--contrast", choices=["rest", "benign"], help="contrast texts")
    triage.add_argument(
        "--max-density",
        type=float,
        help="reject features firing outside their concept at more x the mean feature rate",
    )
    triage.add_argument(
        "--max-non-content",
        type=float,
        help="reject features whose top contexts peak on non-content tokens in more of them",
    )
    triage.add_argument(
        "--min-term-share",
        type=float,
        help="share of top contexts that must peak on a safety keyword",
    )

    reference = sub.add_parser(
        "reference", help="the reference set: features labeled by reading (bench/reference/)"
    ).add_subparsers(dest="action", required=True)
    dump = reference.add_parser(
        "dump",
        parents=[common],
        help="blind views of a stratified sample of the selected SAE, for labelers to read",
    )
    dump.add_argument(
        "--out", type=Path, required=True, help="folder for view-NN.txt + sample.json"
    )
    dump.add_argument("--n", type=int, default=240, help="features to sample")
    dump.add_argument("--seed", type=int, default=0, help="sampling seed")
    assemble = reference.add_parser(
        "assemble", help="join a dump's sample.json with the readers' labels (JSON lines)"
    )
    assemble.add_argument("--sample", type=Path, required=True, help="the dump's sample.json")
    assemble.add_argument("--labels", type=Path, nargs="+", required=True, help="JSONL files")
    assemble.add_argument("--out", type=Path, required=True, help="the reference set file")
    assemble.add_argument(
        "--overlap", type=Path, nargs="*", default=[], help="second readers' labels (JSONL)"
    )
    check = reference.add_parser(
        "check",
        parents=[common],
        help="simulated expert, triage and accepted explanations against the reference set",
    )
    check.add_argument(
        "--file", type=Path, help="reference set (default: bench/reference/<sae>.json)"
    )
    check.add_argument(
        "--half", choices=["test", "dev", "all"], default="test", help="which half to judge on"
    )

    status = sub.add_parser("status", parents=[common], help="progress of the workspace")
    status.add_argument("--json", action="store_true", help="one JSON object (stable keys)")

    demo = sub.add_parser(
        "demo", parents=[common], help="run the whole main job on the embedded default"
    )
    demo.add_argument(
        "--headless", action="store_true", help="never wait on a person; leave no server running"
    )
    demo.add_argument("--max-benign", type=int, default=3000)
    demo.add_argument(
        "--corpus", type=Path, help="use this corpus file instead of the packaged default"
    )
    demo.add_argument(
        "--spec", action="append", help="LAYER:WIDTH:K candidates (default: the demo set)"
    )
    demo.add_argument("--epochs", type=float, help="SAE training passes over the tokens")
    for plugin in plugins:
        if plugin.add_commands:
            plugin.add_commands(sub, common)
        if plugin.add_demo_options:
            plugin.add_demo_options(demo)
    demo.set_defaults(plugins=plugins)
    return parser


def _workspace(args: argparse.Namespace):
    from safesail.workspace import Workspace

    return Workspace(
        WorkspaceConfig(args.workspace, args.db_url, args.cache_dir or default_cache_dir()),
        args.model,
    )


def _config(cls: type, args: argparse.Namespace, *names: str):
    """A config from the flags the user gave (the dataclass keeps every default, in one place);
    invalid values become one-line errors."""
    given = {name: value for name in names if (value := getattr(args, name, None)) is not None}
    try:
        return cls(**given)
    except ValueError as exc:
        raise SafesailError(str(exc)) from None


def _specs(values: list[str] | None) -> list[SaeSpec]:
    if not values:
        return list(DEFAULT_SAES)
    try:
        return [SaeSpec.parse(v) for v in values]
    except ValueError as exc:
        raise SafesailError(str(exc)) from None


def _print_ranking(ws) -> None:
    rows = sorted(ws.saes(), key=lambda r: -(r.selection_score or -1))
    print(
        f"{'SAE':<22}{'layer':>6}{'d_sae':>7}{'k':>5}{'score':>8}  {'best AUROC / probe F1 per concept'}"
    )
    for r in rows:
        concepts = (r.selection or {}).get("concepts", {})
        detail = " ".join(
            f"{c}:{v['best_auroc']:.2f}/{v['probe_f1']:.2f}" for c, v in list(concepts.items())[:4]
        )
        mark = " *" if r.selected else ""
        score = f"{r.selection_score:.3f}" if r.selection_score is not None else "-"
        print(f"{r.id + mark:<22}{r.layer:>6}{r.d_sae:>7}{r.k or '-':>5}{score:>8}  {detail} ...")


def _print_candidates(ws, per_concept: int = 1, contexts: int = 3) -> None:
    from sqlmodel import Session, select

    from safesail.collect import feature_examples
    from safesail.storage import Context, Feature

    with Session(ws.engine) as session:
        rows = session.exec(
            select(Feature)
            .where(Feature.sae_id == ws.selected_sae, Feature.candidate)
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
        from safesail.reference import assemble

        n = assemble(args.sample, args.labels, args.out, args.overlap)
        print(f"wrote {n} labeled features to {args.out}")
        return 0
    progress = not args.quiet
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
            from safesail.corpus import load_corpus_file

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
            trained = ws.train_saes(
                _specs(args.spec), _config(TrainConfig, args, "batch_size", "epochs")
            )
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
        else:
            _print_ranking(ws)
    elif cmd == "collect":
        done = ws.collect(
            _config(CollectConfig, args, "top_k"), sae_ids=args.sae, progress=progress
        )
        print(f"collected {len(done)} SAE(s): {', '.join(done) or 'all already collected'}")
    elif cmd == "select":
        from safesail.selection import SelectionConfig

        ws.select(override=args.sae, config=_config(SelectionConfig, args, "contrast"))
        _print_ranking(ws)
    elif cmd == "triage":
        from safesail.selection import TriageConfig

        counts = ws.triage(
            _config(
                TriageConfig,
                args,
                "min_precision",
                "min_support",
                "fire_fraction",
                "contrast",
                "max_density",
                "max_non_content",
                "min_term_share",
            )
        )
        print(f"{sum(counts.values())} safety candidates in {ws.selected_sae}: {counts}")
        _print_candidates(ws)
    elif cmd == "reference":
        if args.action == "dump":
            from safesail.reference import dump

            if (sae_id := ws.selected_sae) is None:
                raise SafesailError("no SAE selected yet: run `safesail select` first")
            n = dump(ws.engine, sae_id, args.out, args.n, args.seed)
            print(f"wrote the blind views of {n} features of {sae_id} to {args.out}/view-*.txt")
        else:
            from safesail.reference_check import check, default_file

            report = check(ws, args.file or default_file(ws), args.half)
            for name, value in report.items():
                print(f"{name}={value}")
    elif cmd == "status":
        status = ws.status()
        print(json.dumps(status, indent=None if args.json else 2))
    elif cmd == "demo":
        return demo(ws, args, progress)
    return 0


def demo(ws, args: argparse.Namespace, progress: bool) -> int:
    """The main job on the embedded default: corpus, SAEs, collection, selection, triage, then
    each room's step (labeling, explaining, exports, app) in plugin order."""
    print(f"safesail demo: workspace {ws.config.workspace.resolve()}")
    if args.corpus:
        from safesail.corpus import load_corpus_file

        ws.add_corpus(load_corpus_file(args.corpus, ws.taxonomy))
    elif not ws.corpus_counts():
        ws.build_default_corpus(max_benign=args.max_benign, progress=progress)
    print(f"corpus: {ws.corpus_counts()}")
    ws.train_saes(_specs(args.spec), _config(TrainConfig, args, "epochs"))
    ws.collect(progress=progress)
    ws.select()
    counts = ws.triage()
    print("\nSAE ranking (concept-specific interpretability; * = selected):")
    _print_ranking(ws)
    print(f"\n{sum(counts.values())} safety candidates in {ws.selected_sae}: {counts}")
    print("top candidate per concept, with its top contexts ([[peak token]]):")
    _print_candidates(ws)
    for plugin in args.plugins:
        if not plugin.demo:
            continue
        try:
            if code := plugin.demo(ws, args, progress):
                return code
        except SafesailError as exc:
            again = f"`{plugin.resume(args)}` reruns only this step; " if plugin.resume else ""
            raise SafesailError(
                f"demo step '{plugin.name}' failed: {exc}. Earlier steps are kept: {again}"
                "rerunning the demo skips the finished ones"
            ) from None
    print(
        f"\nworkspace: {ws.config.workspace.resolve()}   (safesail status --json --workspace {ws.config.workspace})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except SafesailError as exc:
        print(f"safesail: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("safesail: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
