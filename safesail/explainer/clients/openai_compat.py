"""An OpenAI-compatible chat client with a request cache, a cost ledger, retries and a rate
limit, plus schema-validated structured answers.

Every request is keyed by sha256(model + messages + parameters): a request already answered is
read from the LlmCall table instead of being paid again, so an interrupted run resumes free.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from safesail.db.tables import LlmCall, session_scope
from safesail.errors import SafesailError

if TYPE_CHECKING:  # the settings import the scorer registry, whose scorers call this client
    from safesail.explainer.config import LlmConfig


class Completion(NamedTuple):
    """One answer, fresh or from the cache."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached: bool


class Structured(NamedTuple):
    """A validated answer, or None with the reason the last attempt was refused."""

    value: BaseModel | None
    reason: str | None
    attempts: int


_CLOSERS = ("", '"}', '"]}', "]}", "}", '."}')


def parse_json(text: str) -> Any:
    """The JSON object in a reply, repaired where small models slip: code fences, text around
    the object, raw newlines inside strings, and an answer cut at the token limit."""
    body = re.sub(r"^```(?:json)?|```$", "", text.strip()).strip()
    start = body.find("{")
    if start < 0:
        raise ValueError(f"no JSON object in the reply: {text[:80]!r}")
    # A raw control character is invalid inside a JSON string and plain whitespace outside one.
    body = re.sub(r"[\n\r\t]", " ", body[start:])
    end = body.rfind("}")
    candidates = [body[: end + 1]] if end >= 0 else []
    candidates += [body + closer for closer in _CLOSERS]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError(f"reply is not valid JSON: {text[:80]!r}")


def request_key(model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
    payload = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class _RateLimit:
    """At most `rate` request starts per second across threads."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.lock = threading.Lock()
        self.next_at = 0.0

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_at)
            self.next_at = start + self.interval
        time.sleep(max(0.0, start - now))


class LlmClient:
    """Chat completions against one endpoint and model, cached and accounted in the database.

    `death` (for a server this process manages) says why that server is gone, or None while it
    runs: a failed connection to a dead server is reported as its death at once, not retried."""

    def __init__(
        self,
        engine: Engine,
        config: LlmConfig,
        base_url: str,
        death: Callable[[], str | None] | None = None,
    ) -> None:
        import openai

        self.death = death
        self.engine = engine
        self.config = config
        self.base_url = base_url
        self.model = config.resolved_model
        self.price = config.price()
        self._openai = openai
        self._client = openai.OpenAI(
            base_url=base_url,
            api_key=os.environ.get(config.api_key_env) or "not-needed",
            timeout=config.timeout_s,
            max_retries=0,
        )
        self._rate = _RateLimit(config.requests_per_second)

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        step: str,
        max_tokens: int,
        schema: dict[str, Any] | None = None,
        attempt: int = 0,
        sae_id: str | None = None,
        feature: int | None = None,
    ) -> Completion:
        """One completion; a request seen before is served from the cache at no cost."""
        params: dict[str, Any] = {
            "max_tokens": max_tokens,
            "temperature": 0.0 if attempt == 0 else 0.7,
            "seed": attempt,
        }
        if schema is not None:
            params["response_format"] = (
                {"type": "json_object", "schema": schema}
                if self.config.structured == "json_object_schema"
                else {"type": "json_object"}
            )
        key = request_key(self.model, messages, params)
        with Session(self.engine) as session:
            hit = session.get(LlmCall, key)
            if hit is not None:
                finish = (hit.response and json.loads(hit.response)) or {}
                return Completion(finish.get("text", ""), finish.get("finish_reason"), 0, 0, True)
        started = time.perf_counter()
        response = self._send(messages, params)
        latency = time.perf_counter() - started
        choice = self._first_choice(response)
        text = choice.message.content or ""
        usage = response.usage
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = (prompt_tokens * self.price[0] + completion_tokens * self.price[1]) / 1e6
        row = LlmCall(
            key=key,
            model=self.model,
            step=step,
            sae_id=sae_id,
            feature=feature,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=latency,
            cost_usd=cost,
            response=json.dumps({"text": text, "finish_reason": choice.finish_reason}),
        )
        try:
            with session_scope(self.engine) as session:
                session.add(row)
        except IntegrityError:  # another thread answered the same request first: keep one row
            pass
        return Completion(text, choice.finish_reason, prompt_tokens, completion_tokens, False)

    def _first_choice(self, response: Any) -> Any:
        """The answer's first choice; an endpoint that answers 200 with something else (an
        HTML page of a proxy or a web server at that port, plain text) is not OpenAI-compatible,
        and the user needs the URL and what came back, not an AttributeError."""
        choices = getattr(response, "choices", None)
        if not choices or getattr(choices[0], "message", None) is None:
            shown = " ".join(str(response).split())[:120]
            raise SafesailError(
                f"LLM endpoint {self.base_url} is not OpenAI-compatible: it answered {shown!r} — "
                "point --base-url at a /v1 chat-completions server"
            )
        return choices[0]

    def _send(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Any:
        """The HTTP request with backoff on transient failures; gives up with one clear line."""
        oa = self._openai
        last = ""
        for retry in range(self.config.max_retries + 1):
            self._rate.wait()
            wait = self.config.backoff_s * 2**retry
            try:
                return self._client.chat.completions.create(
                    model=self.model, messages=messages, **params
                )
            except oa.RateLimitError as exc:
                last = "rate limited (429)"
                after = exc.response.headers.get("retry-after") if exc.response else None
                if after and after.replace(".", "", 1).isdigit():
                    wait = min(float(after), 60.0)
            except oa.APITimeoutError:
                last = f"timed out after {self.config.timeout_s:g} s"
                self._raise_if_dead()
            except oa.APIConnectionError as exc:
                last = f"connection failed ({exc.__cause__ or exc})"
                self._raise_if_dead()
            except oa.InternalServerError as exc:
                last = f"server error {exc.status_code}"
            except oa.APIStatusError as exc:
                raise SafesailError(
                    f"LLM endpoint {self.base_url} refused the request ({exc.status_code}): "
                    f"{str(exc.message)[:160]} — check --model and the endpoint's API key"
                ) from None
            if retry < self.config.max_retries:
                time.sleep(wait)
        raise SafesailError(
            f"LLM endpoint {self.base_url} unavailable after {self.config.max_retries + 1} tries "
            f"({last}) — start it or fix --base-url, then rerun: answered requests are cached"
        )

    def _raise_if_dead(self) -> None:
        if self.death is not None and (why := self.death()) is not None:
            raise SafesailError(f"{why} — rerun the command: answered requests are cached, so it resumes")

    def structured(
        self,
        messages: list[dict[str, str]],
        model_cls: type[BaseModel],
        *,
        step: str,
        max_tokens: int,
        schema: dict[str, Any],
        context: dict[str, Any] | None = None,
        sae_id: str | None = None,
        feature: int | None = None,
    ) -> Structured:
        """A schema-validated answer; invalid JSON or values are retried with another seed, and
        still-invalid answers come back as a reason rather than as garbage."""
        reason = None
        for attempt in range(self.config.invalid_retries + 1):
            reply = self.chat(
                messages,
                step=step,
                max_tokens=max_tokens,
                schema=schema,
                attempt=attempt,
                sae_id=sae_id,
                feature=feature,
            )
            value, reason = validate_answer(reply.text, context, model_cls)
            if value is not None:
                return Structured(value, None, attempt + 1)
        return Structured(None, reason, self.config.invalid_retries + 1)


def validate_answer(
    text: str, context: dict[str, Any] | None, model_cls: type[BaseModel] | None = None
) -> tuple[Any, str | None]:
    """(the reply validated as `model_cls`, None) or (None, why it was refused); the default
    model is the explainer's ExplanationAnswer."""
    if model_cls is None:
        from safesail.explainer.explainers import ExplanationAnswer

        model_cls = ExplanationAnswer
    try:
        return model_cls.model_validate(parse_json(text), context=context), None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return None, f"invalid answer ({where}: {first['msg']}): {text[:120]!r}"
    except ValueError as exc:
        return None, str(exc)
