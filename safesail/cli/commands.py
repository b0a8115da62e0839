"""The `safesail` argument parser: the core's subcommands and the rooms' (through plugins).

Every subcommand sets its handler with `set_defaults(handler=...)`, the core's here (from
`safesail.cli.handlers` and `safesail.cli.demo`) as the rooms' in their plugins, so
`safesail.cli.main` only parses and dispatches. Wherever a step has a config dataclass its flags
come from that class (`safesail.cli.flags`): name, type, choices, default and help are declared
once, on the field, and each handler maps them back with `config_from_args`. The remaining flags
(paths, ids, counts with no config) are written here.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import NoReturn

from safesail.cli import handlers
from safesail.cli.demo import DEMO_TRAIN_FLAGS
from safesail.cli.demo import demo as run_demo
from safesail.cli.flags import add_config_flags, field_docs
from safesail.cli.handlers import (
    COLLECT_FLAGS,
    RAY_FLAGS,
    SELECTION_FLAGS,
    TRAIN_FLAGS,
    TRIAGE_FLAGS,
)
from safesail.collection.ray import RayConfig
from safesail.config import PROTOCOL_LAYERS, CollectConfig, TrainConfig, WorkspaceConfig
from safesail.plugins import Plugin, load_plugins
from safesail.selection.config import SelectionConfig
from safesail.triage.config import TriageConfig


def layer_list(text: str) -> list[int]:
    """Read '2,8,15' (a flag's value) into layers; a bad value is argparse's one-line error."""
    try:
        layers = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a comma-separated list of layers"
        ) from None
    if any(layer < 0 for layer in layers):
        raise argparse.ArgumentTypeError(f"layers must be >= 0, got {text}")
    return layers


DESCRIPTION = "`safesail`: one command, a subcommand per pipeline step, one-line errors."

WORKSPACE_FLAGS = ("workspace", "db_url", "cache_dir", "device", "dtype", "memory_budget_mb")
"""WorkspaceConfig fields every command takes (`--workspace`, `--db-url`, `--cache-dir`,
`--device`, `--dtype`, `--memory-budget-mb`)."""
RAY_FLAG_NAMES = {"address": "--ray", "workers": "--ray-workers", "cpus": "--ray-cpus"}
RAY_HELPS = {
    "address": "Shard the collection over Ray when --ray, --ray-workers or --ray-cpus is given "
    "(with none, it runs in this process). " + field_docs(RayConfig)["address"]
}
"""`--ray`'s help says when Ray is used at all, which RayConfig's field (a cluster address)
cannot: its `(default: auto)` would otherwise read as "Ray always"."""


def common_options() -> argparse.ArgumentParser:
    """The options every workspace command shares (a parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    add_config_flags(
        common,
        WorkspaceConfig,
        WORKSPACE_FLAGS,
        helps={
            "workspace": "workspace folder (default: ./workspace or $SAFESAIL_WORKSPACE)",
            "db_url": "SQLAlchemy URL (default: $SAFESAIL_DB_URL, else sqlite in the workspace)",
            "cache_dir": "download/conversion cache (default: $SAFESAIL_CACHE or ~/.cache/safesail)",
        },
    )
    # read when the parser is built, so the rooms' resume hints name the real folder
    common.set_defaults(
        workspace=Path(os.environ.get("SAFESAIL_WORKSPACE", "workspace")),
        db_url=os.environ.get("SAFESAIL_DB_URL"),
    )
    common.add_argument(
        "--model",
        default=None,
        help="HF model name or local folder (default: the embedded SmolLM2)",
    )
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    add_debug_flag(common)
    return common


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """`--debug`: a failure shows its traceback instead of the one-line error. Suppressed
    default, so the flag given before the subcommand is not reset by the subcommand's parser."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the traceback of a failure instead of one line",
    )


def _corpus(sub, common: argparse.ArgumentParser) -> None:
    corpus = sub.add_parser("corpus", help="build or add to the corpus").add_subparsers(
        dest="action", required=True
    )
    build = corpus.add_parser(
        "build",
        parents=[common],
        help="build the default safety + benign corpus from packaged data",
    )
    build.add_argument("--max-benign", type=int, default=3000, help="benign texts at most")
    build.add_argument(
        "--taxonomy", type=Path, help="concept taxonomy JSON (default: the packaged one)"
    )
    add = corpus.add_parser(
        "add", parents=[common], help="add your own corpus (JSONL, JSON, CSV, Parquet)"
    )
    add.add_argument("path", type=Path)
    add.add_argument("--text-field", default="text")
    add.add_argument("--concept-field", default="concept")
    build.set_defaults(handler=handlers.corpus_build)
    add.set_defaults(handler=handlers.corpus_add)
    corpus.add_parser("show", parents=[common], help="texts per concept").set_defaults(
        handler=handlers.corpus_show
    )


def _sae(sub, common: argparse.ArgumentParser) -> None:
    sae = sub.add_parser("sae", help="train, add or list SAEs").add_subparsers(
        dest="action", required=True
    )
    train = sae.add_parser("train", parents=[common], help="train TopK candidates with sae-lens")
    train.add_argument(
        "--spec", action="append", help="LAYER:WIDTH:K, repeatable (default: the demo candidates)"
    )
    train.add_argument(
        "--at-layers",
        type=layer_list,
        metavar="L,L,...",
        help="instead: the selected SAE's width and k at these layers (Safe-SAIL's protocol)",
    )
    add_config_flags(train, TrainConfig, TRAIN_FLAGS)
    train.set_defaults(handler=handlers.sae_train)
    add = sae.add_parser(
        "add", parents=[common], help="add an SAE in sae-lens format or a pretrained release"
    )
    add.add_argument("--path", type=Path, help="folder with cfg.json + sae_weights.safetensors")
    add.add_argument("--release", help="sae-lens pretrained release (needs the hub)")
    add.add_argument("--sae-id", help="SAE id inside the release")
    add.add_argument("--layer", type=int, help="block the SAE reads (default: from its hook name)")
    add.add_argument("--id", dest="record_id", help="id to give it here")
    add.set_defaults(handler=handlers.sae_add)
    sae.add_parser("list", parents=[common], help="candidate SAEs and their scores").set_defaults(
        handler=handlers.sae_list
    )
    remove = sae.add_parser(
        "remove", parents=[common], help="remove an SAE and every row about it (its files stay)"
    )
    remove.add_argument("remove_id", metavar="ID", help="the SAE's id (`safesail sae list`)")
    remove.add_argument("--force", action="store_true", help="even the selected SAE")
    remove.set_defaults(handler=handlers.sae_remove)


def _steps(sub, common: argparse.ArgumentParser) -> None:
    collect = sub.add_parser(
        "collect", parents=[common], help="build the activation cache (resumable)"
    )
    add_config_flags(collect, CollectConfig, COLLECT_FLAGS)
    collect.add_argument("--sae", action="append", help="only these SAE ids")
    add_config_flags(collect, RayConfig, RAY_FLAGS, flags=RAY_FLAG_NAMES, helps=RAY_HELPS)
    collect.set_defaults(handler=handlers.collect)

    residuals = sub.add_parser(
        "residuals",
        parents=[common],
        help="one forward pass over the corpus, its residuals kept for training and collection",
    )
    which_store = residuals.add_mutually_exclusive_group(required=True)
    which_store.add_argument(
        "--layers", type=layer_list, metavar="L,L,...", help="the blocks whose output to keep"
    )
    which_store.add_argument("--drop", action="store_true", help="delete the store")
    residuals.set_defaults(handler=handlers.residuals)

    select_ = sub.add_parser(
        "select", parents=[common], help="rank SAEs by concept-specific interpretability"
    )
    select_.add_argument("--sae", help="select this SAE instead of the best-scoring one")
    select_.add_argument(
        "--layer", type=int, help="choose among the SAEs on this layer (all are scored)"
    )
    add_config_flags(select_, SelectionConfig, SELECTION_FLAGS)
    select_.set_defaults(handler=handlers.select)

    triage = sub.add_parser(
        "triage", parents=[common], help="mark safety-relevant features of the selected SAE"
    )
    which = triage.add_mutually_exclusive_group()
    which.add_argument("--sae", action="append", help="triage these SAEs (repeatable)")
    which.add_argument(
        "--all-layers",
        action="store_true",
        help="triage the selected configuration at every layer it is collected at",
    )
    add_config_flags(triage, TriageConfig, TRIAGE_FLAGS)
    triage.set_defaults(handler=handlers.triage)


def _reference(sub, common: argparse.ArgumentParser) -> None:
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
    dump.add_argument(
        "--candidate-share", type=float, default=0.5, help="share of triage candidates"
    )
    dump.add_argument(
        "--near-share",
        type=float,
        default=0.0,
        help="share of near misses (top non-candidates by safety score, per rejection kind)",
    )
    dump.set_defaults(handler=handlers.reference_dump)
    assemble = reference.add_parser(
        "assemble", help="join a dump's sample.json with the readers' labels (JSON lines)"
    )
    assemble.add_argument("--sample", type=Path, required=True, help="the dump's sample.json")
    assemble.add_argument("--labels", type=Path, nargs="+", required=True, help="JSONL files")
    assemble.add_argument("--out", type=Path, required=True, help="the reference set file")
    assemble.add_argument(
        "--overlap", type=Path, nargs="*", default=[], help="second readers' labels (JSONL)"
    )
    assemble.add_argument(
        "--adjudication",
        type=Path,
        nargs="*",
        default=[],
        help="third readings of the features the two readers split on (JSONL)",
    )
    assemble.set_defaults(handler=handlers.reference_assemble, reads_workspace=False)
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
    check.set_defaults(handler=handlers.reference_check)


def _install(sub, common: argparse.ArgumentParser) -> None:
    sub.add_parser(
        "setup",
        parents=[common],
        help="download what the demo needs once, from the locks (corpus packages, Label Studio)",
    ).set_defaults(handler=handlers.setup, reads_workspace=False)
    sub.add_parser(
        "doctor",
        parents=[common],
        help="check every part (packages, llama.cpp, Label Studio, model, disk, ...), with fixes",
    ).set_defaults(handler=handlers.doctor, reads_workspace=False)


def _demo(sub, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    demo = sub.add_parser(
        "demo", parents=[common], help="run the whole main job on the embedded default"
    )
    demo.add_argument(
        "--headless", action="store_true", help="never wait on a person; leave no server running"
    )
    demo.add_argument("--max-benign", type=int, default=3000, help="benign texts at most")
    demo.add_argument(
        "--corpus", type=Path, help="use this corpus file instead of the packaged default"
    )
    demo.add_argument(
        "--spec",
        action="append",
        help="LAYER:WIDTH:K configuration-search candidates (default: the demo set, on one layer)",
    )
    demo.add_argument(
        "--layers",
        type=layer_list,
        default=list(PROTOCOL_LAYERS),
        metavar="L,L,...",
        help=f"layers the chosen configuration is trained at (default: {','.join(map(str, PROTOCOL_LAYERS))})",
    )
    add_config_flags(demo, TrainConfig, DEMO_TRAIN_FLAGS)
    demo.set_defaults(handler=run_demo)
    return demo


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser, whose refusals follow the rule every failure follows: one line
    `safesail: error: <what> — <what to do>`, exit 2 (argparse's own prints its usage block
    first). Subcommand parsers inherit the class, so each names its own `--help`."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"safesail: error: {message} — see `{self.prog} --help`\n")


def build_parser(plugins: list[Plugin] | None = None) -> argparse.ArgumentParser:
    """The whole command line: the core's steps, then each room's commands and demo flags."""
    plugins = load_plugins() if plugins is None else plugins
    common = common_options()
    parser = OneLineParser(prog="safesail", description=DESCRIPTION)
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    _corpus(sub, common)
    _sae(sub, common)
    _steps(sub, common)
    _reference(sub, common)
    status = sub.add_parser("status", parents=[common], help="progress of the workspace")
    status.add_argument("--json", action="store_true", help="one JSON object (stable keys)")
    status.set_defaults(handler=handlers.status)
    _install(sub, common)
    demo = _demo(sub, common)
    for plugin in plugins:
        if plugin.add_commands:
            plugin.add_commands(sub, common)
        if plugin.add_demo_options:
            plugin.add_demo_options(demo)
    parser.set_defaults(plugins=plugins)
    return parser
