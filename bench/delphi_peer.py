"""The real EleutherAI delphi (PyPI eai-delphi 0.1.3) beside our explainer: delphi's own
`DefaultExplainer` explains the same features from the same examples on the same endpoint,
and delphi's own `DetectionScorer` and `FuzzingScorer` judge both its explanations and ours.
Prints explaining tokens per feature and delphi's class-balanced accuracy per style, last
`tokens_ours_over_delphi=<ratio>` (goal: <= 0.5 at equal or better delphi-scored accuracy).

Why against the real package: bench/explainer.py's "baseline" is our imitation of delphi's
prompt; here delphi's own prompt builder, client, scorers and metric do the work, so nothing
in the comparison is our reading of delphi.

Fixed before any run (never chosen after seeing results):
- the database: a copy of `--workspace`'s safesail.db in a temporary folder with every earlier
  LlmCall, Explanation and Score row removed (nothing is served from an earlier run's cache);
- the features: the reference set's test half, sorted, seeded permutation with
  `np.random.default_rng(0)`, the first `--features`; the gold (our few-shot material): the dev
  half the same way, the first `--gold`, seeded as accepted human labels with the reader's
  labels and reasons. The draws are bench/explainer.py's (dev permuted first, then test), so
  `--gold G --features N` explains bench/explainer.py's `--gold G --unlabeled N` features;
- the endpoint: `safesail.explainer.pipeline.endpoint`, the embedded llama.cpp server
  (SmolLM2-135M, model name `smollm2-135m-instruct`) or `--base-url`/`--model`; delphi's
  `OpenRouter` client posts to `<base_url>/chat/completions` with that model name (its URL
  is the full chat-completions URL, not a /v1 base);
- ours: `explain(ws, ExplainConfig(prompting="ours", scorers=("detection",), n_score_pos=5,
  n_score_neg=5, max_gold=0), ...)`, everything else at its defaults.
  max_gold=0: the gold-labeled features (the calibration yardstick) are not explained, since
  calibration is not measured here and the few-shot examples come from the gold labels and
  their contexts, not from explaining them (so our explanations of the chosen features are
  the same); the yardstick's one-off cost per run is not in the ratio. Five held-out
  activating and five non-activating contexts (instead of 4 + 4) so that delphi's scorers see
  two full prompts of five, its CLI default `num_examples_per_scorer_prompt`, which its parser
  requires per batch and its few-shot examples show;
- the same examples: one delphi `LatentRecord` per feature, built from
  `safesail.explainer.materials.materials` with that config (exactly the contexts our run is
  given): `train` = the first `n_shown` (5) contexts of the explain split (the strongest top
  contexts, the ones our prompt shows), `test` = the 5 held-out activating contexts (the rest
  of the top contexts and the decile samples, spread from strongest to weakest), `not_active`
  = the 5 seeded texts where the feature never fires (activations zero, distance -1 as
  delphi's random non-activating windows); per-token activations as stored;
  `normalized_activations` as delphi's sampler computes them (ceil(10 * a / record max),
  clamped to 0..10); token ids are -1 placeholders (our contexts store strings as shown, and
  none of the three delphi classes used reads ids);
- delphi's explainer: `DefaultExplainer` at its defaults (activations shown, no chain of
  thought, highlight threshold 0.3, temperature 0), completion budget 128 tokens (its client's
  default, 3000, lets a 135M model at temperature 0 repeat itself into the server's 4096-token
  context; 128 leaves the one `[EXPLANATION]:` line its prompt asks for room for a preamble);
- delphi's scorers: `DetectionScorer` and `FuzzingScorer` (fuzz_type "default") at their
  defaults except `n_examples_shown=5` (above), no log-probs, temperature 0, 32 completion
  tokens (the answer is one Python list of five 0/1); a fresh scorer per feature and style, so
  both styles' samples are shuffled and batched identically (delphi seeds each scorer with 42);
- the metric: delphi's own `compute_confusion` + `compute_classification_metrics`
  (delphi.log.result_analysis) on the samples pooled over the features, per style and scorer,
  as delphi's `log_results` pools them; samples delphi could not parse an answer for are
  excluded by delphi and shown as valid/total;
- a failed explanation (ours: a failed row; delphi's: "Explanation could not be parsed." or a
  failed request) is not scored and its tokens still count; a style that explains nothing gets
  accuracy 0 with the reason; when the ratio cannot be formed it is printed as `inf` with the
  reason, never as a flattering number;
- tokens: ours = the LlmCall ledger rows of step "explain" for the chosen features (every
  attempt, invalid-answer retries included; our own detection scoring is not counted, delphi's
  scorers are the judge here); delphi's = the `usage` of every chat-completions response of
  its explainer client (a subclass of delphi's `OpenRouter` whose `postprocess` adds the
  response's usage and then runs delphi's own). Ratio = (ours / N) / (delphi's / N), N the
  number of chosen features.

What differs, because the formats differ: our prompt shows each of the 5 contexts as the window
around its peak (8 tokens before, 3 after) with fired tokens <<marked>>, the 2 nearest gold
features as worked examples and one line of corpus-tag evidence, and asks for schema JSON in at
most 72 tokens; delphi's shows the same 5 contexts whole with its << >> highlights and
"Activations:" lists after its own system prompt and 3 fixed worked examples, free text.
delphi's scorers read whole contexts (ours, not reported here, read segments).

delphi's package `__init__`s import vllm, faiss and its activation cache, which none of these
classes uses: they are replaced by empty stub packages pointing at the real folders, so the real
modules load (the approach of tests/exports/test_exports_peers.py). blobfile/orjson (LatentRecord.save)
and plotly (result_analysis's plots) are stubbed only when not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import importlib.util
import math
import os
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlmodel import Session, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this script

from _reference_draw import add_source_args, copy_db, draw  # noqa: E402

from safesail.db.tables import Explanation, LlmCall  # noqa: E402
from safesail.explainer.config import ExplainConfig, LlmConfig  # noqa: E402
from safesail.explainer.explainers import Shown  # noqa: E402
from safesail.explainer.materials import Material, materials  # noqa: E402
from safesail.explainer.pipeline import endpoint, explain  # noqa: E402
from safesail.explainer.simulate import seed_gold  # noqa: E402
from safesail.reference.check import default_file, open_reference  # noqa: E402
from safesail.workspace import Workspace  # noqa: E402

CONFIG = ExplainConfig(
    prompting="ours", scorers=("detection",), n_score_pos=5, n_score_neg=5, max_gold=0
)
"""Our run's settings (see the module doc for why each differs from the defaults)."""
PER_PROMPT = 5
"""delphi scorers' n_examples_shown: its CLI default num_examples_per_scorer_prompt."""
EXPLAIN_MAX_TOKENS = 128
SCORE_MAX_TOKENS = 32
UNPARSED = "Explanation could not be parsed."
"""What delphi's Explainer returns when the answer has no [EXPLANATION]: line."""
SCORERS = ("detection", "fuzzing")
STYLES = ("ours", "delphi")


def say(line: str) -> None:
    """A progress line, flushed at once (the run is slow on a CPU)."""
    print(line, flush=True)


# --- delphi's real modules ------------------------------------------------------------------


@dataclass(frozen=True)
class Delphi:
    """The delphi classes and functions this bench uses, from the installed package."""

    latents: types.ModuleType
    openrouter: type
    explainer: type
    scorers: dict[str, type]
    confusion: Callable[..., dict]
    metrics: Callable[[dict], dict]


def _stub_missing(names: tuple[str, ...]) -> None:
    """Empty modules for third-party imports the used code never calls, when not installed."""
    if importlib.util.find_spec(names[0]) is None:
        for name in names:
            sys.modules.setdefault(name, types.ModuleType(name))


def load_delphi() -> Delphi:
    """delphi's real explainer, client, scorer and metric modules; its package `__init__`s
    (which import vllm, faiss and the activation cache) are replaced by stub packages whose
    __path__ is the real folder, so only the modules used and their imports are loaded."""
    spec = importlib.util.find_spec("delphi")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "eai-delphi is not installed: `make install` (pip install --no-deps eai-delphi==0.1.3)"
        )
    root = Path(spec.submodule_search_locations[0])
    for name in ("delphi.explainers", "delphi.clients", "delphi.latents", "delphi.scorers"):
        package = types.ModuleType(name)
        package.__path__ = [str(root / name.split(".")[1])]
        sys.modules.setdefault(name, package)
    _stub_missing(("blobfile",))
    _stub_missing(("orjson",))
    _stub_missing(("plotly", "plotly.express", "plotly.graph_objects"))
    latents = importlib.import_module("delphi.latents.latents")
    for name in ("Latent", "Example", "ActivatingExample", "NonActivatingExample", "LatentRecord"):
        # `from ...latents import LatentRecord` in the scorers reads the (stub) package
        setattr(sys.modules["delphi.latents"], name, getattr(latents, name))
    analysis = importlib.import_module("delphi.log.result_analysis")
    return Delphi(
        latents=latents,
        openrouter=importlib.import_module("delphi.clients.openrouter").OpenRouter,
        explainer=importlib.import_module("delphi.explainers.default.default").DefaultExplainer,
        scorers={
            "detection": importlib.import_module(
                "delphi.scorers.classifier.detection"
            ).DetectionScorer,
            "fuzzing": importlib.import_module("delphi.scorers.classifier.fuzz").FuzzingScorer,
        },
        confusion=analysis.compute_confusion,
        metrics=analysis.compute_classification_metrics,
    )


@dataclass
class Usage:
    """Tokens the endpoint reported in the responses one client received."""

    calls: int = 0
    prompt: int = 0
    completion: int = 0
    missing: int = 0
    """Responses without a usage block (their tokens are unknown, so the count is a floor)."""

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def counting_client(d: Delphi, base_url: str, model: str, max_tokens: int) -> Any:
    """delphi's OpenRouter client at `<base_url>/chat/completions`, counting each response's
    `usage` before delphi's own postprocess parses it (the request itself is delphi's)."""

    class CountingOpenRouter(d.openrouter):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(
                model,
                api_key=os.environ.get("OPENAI_API_KEY") or "not-needed",
                base_url=f"{base_url.rstrip('/')}/chat/completions",
                max_tokens=max_tokens,
            )
            self.usage = Usage()

        def postprocess(self, response: Any) -> Any:
            usage = response.json().get("usage") or {}
            self.usage.calls += 1
            self.usage.missing += not usage
            self.usage.prompt += int(usage.get("prompt_tokens") or 0)
            self.usage.completion += int(usage.get("completion_tokens") or 0)
            return super().postprocess(response)

    return CountingOpenRouter()


# --- the same examples as delphi records ----------------------------------------------------


def _activating(d: Delphi, shown: Shown, peak: float) -> Any:
    import torch

    acts = torch.as_tensor(np.asarray(shown.acts, dtype=np.float32))
    return d.latents.ActivatingExample(
        tokens=torch.full((len(shown.tokens),), -1, dtype=torch.long),
        activations=acts,
        normalized_activations=(acts * 10 / max(peak, 1e-6)).ceil().clamp(0, 10),
        str_tokens=list(shown.tokens),
    )


def _quiet(d: Delphi, shown: Shown) -> Any:
    import torch

    return d.latents.NonActivatingExample(
        tokens=torch.full((len(shown.tokens),), -1, dtype=torch.long),
        activations=torch.zeros(len(shown.tokens), dtype=torch.float32),
        str_tokens=list(shown.tokens),
        distance=-1.0,
    )


def latent_record(d: Delphi, sae_id: str, m: Material, n_shown: int) -> Any:
    """One feature's delphi LatentRecord from our material (see the module doc)."""
    peak = float(m.explain[0].acts.max()) if m.explain else 0.0
    train = [_activating(d, s, peak) for s in m.explain[:n_shown]]
    test = [_activating(d, s, peak) for s in m.held.positives]
    return d.latents.LatentRecord(
        latent=d.latents.Latent(sae_id, m.feature),
        examples=train + test,
        not_active=[_quiet(d, s) for s in m.held.negatives],
        train=train,
        test=test,
    )


# --- the run --------------------------------------------------------------------------------


@dataclass
class Judged:
    """delphi's per-sample outputs of one scorer for one style."""

    activating: list[bool] = field(default_factory=list)
    prediction: list[float | None] = field(default_factory=list)
    feature_of: list[int] = field(default_factory=list)
    features: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    def add(self, feature: int, outputs: list[Any]) -> None:
        self.features.add(feature)
        for o in outputs:
            self.activating.append(bool(o.activating))
            self.prediction.append(None if o.prediction is None else float(o.prediction))
            self.feature_of.append(feature)


@dataclass
class DelphiRun:
    """delphi's explanations (or why not) and its scorers' judgements of both styles."""

    texts: dict[int, str] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    explain_usage: Usage = field(default_factory=Usage)
    score_usage: dict[str, Usage] = field(default_factory=dict)
    judged: dict[tuple[str, str], Judged] = field(default_factory=dict)


async def run_delphi(
    d: Delphi,
    base_url: str,
    model: str,
    records: dict[int, Any],
    ours: dict[int, str],
) -> DelphiRun:
    """delphi explains every record, then its scorers judge both styles' explanations."""
    out = DelphiRun()
    client = counting_client(d, base_url, model, EXPLAIN_MAX_TOKENS)
    explainer = d.explainer(client=client)
    for i, (feature, record) in enumerate(records.items(), 1):
        t0 = time.perf_counter()
        try:
            text = (await explainer(record)).explanation
        except Exception as exc:  # delphi raises RuntimeError after its retries
            out.failures[feature] = f"request failed: {exc!r}"[:200]
        else:
            if text.strip() == UNPARSED or not text.strip():
                out.failures[feature] = "answer had no [EXPLANATION]: line"
            else:
                out.texts[feature] = text.strip()
        said = out.texts.get(feature) or f"FAILED ({out.failures[feature]})"
        say(
            f"delphi explain {i}/{len(records)} feature {feature}: {said[:100]!r} "
            f"({time.perf_counter() - t0:.0f} s)"
        )
    out.explain_usage = client.usage
    await client.client.aclose()
    for style, texts in (("ours", ours), ("delphi", out.texts)):
        for name in SCORERS:
            scorer_client = counting_client(d, base_url, model, SCORE_MAX_TOKENS)
            judged = out.judged[(style, name)] = Judged()
            for feature, text in texts.items():
                t0 = time.perf_counter()
                record = dataclasses.replace(records[feature], explanation=text)
                scorer = d.scorers[name](scorer_client, n_examples_shown=PER_PROMPT)
                try:
                    outputs = (await scorer(record)).score
                except Exception as exc:  # e.g. fuzzing asserts on a feature without quiet texts
                    judged.errors.append(f"feature {feature}: {exc!r}"[:200])
                    say(f"delphi {name} of {style} feature {feature}: FAILED {exc!r}"[:200])
                    continue
                judged.add(feature, outputs)
                right = sum(o.correct is True for o in outputs)
                valid = sum(o.prediction is not None for o in outputs)
                say(
                    f"delphi {name} of {style} feature {feature}: {right}/{valid} right of "
                    f"{len(outputs)} ({time.perf_counter() - t0:.0f} s)"
                )
            out.score_usage[f"{style}/{name}"] = scorer_client.usage
            await scorer_client.client.aclose()
    return out


def balanced(d: Delphi, judged: Judged, features: set[int] | None = None) -> tuple[float, int, int]:
    """(delphi's class-balanced accuracy, valid samples, samples) over the judged features."""
    import pandas as pd

    keep = [
        (a, p)
        for a, p, f in zip(judged.activating, judged.prediction, judged.feature_of, strict=True)
        if features is None or f in features
    ]
    if not keep:
        return 0.0, 0, 0
    df = pd.DataFrame(keep, columns=["activating", "prediction"])
    metrics = d.metrics(d.confusion(df))
    return float(metrics["accuracy"]), int(df["prediction"].notna().sum()), len(df)


def our_results(ws: Workspace, features: list[int]) -> tuple[dict[int, str], dict[int, str], Usage]:
    """Our explanation texts, failure reasons and explaining tokens for the chosen features."""
    texts, failures = {}, {}
    with Session(ws.engine) as session:
        for row in session.exec(select(Explanation).where(Explanation.source == "auto")):
            if row.feature not in features:
                continue
            if row.status == "failed" or not row.text:
                failures[row.feature] = str((row.details or {}).get("reason", "failed"))[:200]
            else:
                texts[row.feature] = row.text
        usage = Usage()
        for call in session.exec(select(LlmCall).where(LlmCall.step == "explain")):
            if call.feature in features:
                usage.calls += 1
                usage.prompt += call.prompt_tokens
                usage.completion += call.completion_tokens
    for f in features:
        if f not in texts and f not in failures:
            failures[f] = "no explanation row (no material?)"
    return texts, failures, usage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_args(
        parser, "a demo workspace, read-only (default: ./workspace, what `make demo` builds)"
    )
    parser.add_argument("--features", type=int, default=20, help="reference test-half features")
    parser.add_argument("--gold", type=int, default=20, help="dev-half features used as gold")
    parser.add_argument("--base-url", help="endpoint …/v1 (default: the embedded server)")
    parser.add_argument("--model", help="model name at --base-url (default: the embedded one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="build the delphi records and prompts, print their sizes, stop before any LLM call",
    )
    args = parser.parse_args()
    d = load_delphi()
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-delphi-"))
    try:
        run(args, d, tmp, started)
    finally:
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, d: Delphi, tmp: Path, started: float) -> None:
    ws = copy_db(args.workspace, tmp / "ws")
    ref = open_reference(ws, args.reference or default_file(ws))
    sae = ref.sae_id
    gold, features, given = draw(ref, args.gold, args.features)
    seed_gold(ws.engine, sae, gold, author="reference", given=given)
    found = materials(ws, sae, features, CONFIG, list(ws.taxonomy.concepts))
    records = {f: latent_record(d, sae, found[f], CONFIG.n_shown) for f in features if f in found}
    say(
        f"workspace {args.workspace} ({sae}); {len(features)} reference test features "
        f"({len(records)} with examples), {len(gold)} dev features as gold"
    )
    for f, r in records.items():
        say(
            f"record {f}: train {len(r.train)}, test {len(r.test)}, not_active "
            f"{len(r.not_active)}, tokens/context {len(r.train[0].str_tokens) if r.train else 0}"
        )
    if args.dry_run:
        dry_run(d, records)
        return
    llm = LlmConfig(base_url=args.base_url, model=args.model, concurrency=1)
    with endpoint(ws, llm) as client:
        llm = LlmConfig(base_url=client.base_url, model=args.model, concurrency=1)
        model = llm.resolved_model
        say(f"endpoint {client.base_url}, model {model}; ours explains first")
        t0 = time.perf_counter()
        report = explain(ws, CONFIG, llm, features=features, progress=True)
        say(
            f"ours: {report.explained} explained, {report.failed} failed ({time.perf_counter() - t0:.0f} s)"
        )
        ours, ours_failed, ours_usage = our_results(ws, features)
        for f, why in ours_failed.items():
            say(f"ours feature {f}: FAILED ({why})")
        ours = {f: t for f, t in ours.items() if f in records}
        result = asyncio.run(run_delphi(d, client.base_url, model, records, ours))
    summary(d, args, features, ours, ours_failed, ours_usage, result, time.perf_counter() - started)


def dry_run(d: Delphi, records: dict[int, Any]) -> None:
    """delphi's own prompt builders on the records, with no LLM call: what each would send."""
    explainer = d.explainer(client=None)
    for f, record in records.items():
        messages = explainer._build_prompt(record.train)
        chars = sum(len(m["content"]) for m in messages)
        parts = [
            f"dry run feature {f}: delphi explainer prompt {len(messages)} messages, {chars} chars"
        ]
        probe = dataclasses.replace(record, explanation="(dry run)")
        for name in SCORERS:
            scorer = d.scorers[name](None, n_examples_shown=PER_PROMPT)
            batches = scorer._batch(scorer._prepare(probe))
            prompt = scorer._build_prompt(probe.explanation, batches[0]) if batches else []
            parts.append(
                f"{name}: {sum(len(b) for b in batches)} samples in {len(batches)} prompts "
                f"(first {sum(len(m['content']) for m in prompt)} chars)"
            )
        say("; ".join(parts))
    say("dry run: stopped before any LLM call")


def summary(
    d: Delphi,
    args: argparse.Namespace,
    features: list[int],
    ours: dict[int, str],
    ours_failed: dict[int, str],
    ours_usage: Usage,
    result: DelphiRun,
    seconds: float,
) -> None:
    n = max(len(features), 1)
    usage = {"ours": ours_usage, "delphi": result.explain_usage}
    explained = {"ours": ours, "delphi": result.texts}
    failures = {"ours": ours_failed, "delphi": result.failures}
    say("")
    say(
        f"{len(features)} features, delphi scorers {PER_PROMPT} samples per prompt, "
        f"{seconds:.0f} s in all"
    )
    say(
        f"{'style':>7} {'tok/feat':>9} {'prompt':>8} {'compl.':>7} {'calls':>5} {'explained':>9} "
        f"{'detection':>17} {'fuzzing':>17}"
    )
    for style in STYLES:
        u = usage[style]
        cells = []
        for name in SCORERS:
            judged = result.judged.get((style, name), Judged())
            acc, valid, total = balanced(d, judged)
            cells.append(f"{acc:.3f} ({valid}/{total})" if valid else f"0 ({valid}/{total})")
        say(
            f"{style:>7} {u.total / n:>9.0f} {u.prompt / n:>8.0f} {u.completion / n:>7.0f} "
            f"{u.calls:>5} "
            f"{len(explained[style]):>4}/{len(features):<4} {cells[0]:>17} {cells[1]:>17}"
        )
        if not explained[style]:
            reasons = sorted(set(failures[style].values()))
            say(f"  {style} explained no feature: {'; '.join(reasons)[:300]}")
        for name in SCORERS:
            judged = result.judged.get((style, name), Judged())
            if explained[style] and not any(p is not None for p in judged.prediction):
                why = "; ".join(judged.errors)[:300] or (
                    f"delphi's parser rejected every answer (not a list of {PER_PROMPT} 0/1)"
                )
                say(f"  {style} {name}: no valid answer ({why})")
        if u.missing:
            say(f"  {style}: {u.missing} of {u.calls} responses had no usage (tokens are a floor)")
    both = set(ours) & set(result.texts)
    if both:
        line = []
        for name in SCORERS:
            accs = [balanced(d, result.judged[(s, name)], both)[0] for s in STYLES]
            line.append(f"{name} ours {accs[0]:.3f} vs delphi {accs[1]:.3f}")
        say(f"on the {len(both)} features both explained: " + ", ".join(line))
    for key, u in result.score_usage.items():
        say(f"delphi scoring {key}: {u.total} tokens in {u.calls} calls")
    ours_tok, delphi_tok = ours_usage.total / n, result.explain_usage.total / n
    if not ours:
        print(
            f"tokens_ours_over_delphi=inf (ours explained no feature; {ours_tok:.0f} tokens/feature)"
        )
    elif delphi_tok <= 0 or math.isnan(delphi_tok):
        print("tokens_ours_over_delphi=inf (delphi's explainer spent no counted tokens)")
    else:
        print(f"tokens_ours_over_delphi={ours_tok / delphi_tok:.3f}")


if __name__ == "__main__":
    main()
