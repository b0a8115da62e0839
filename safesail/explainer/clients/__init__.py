"""LLM clients: any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp's server)."""

from safesail.explainer.clients.openai_compat import (
    Completion,
    LlmClient,
    Structured,
    parse_json,
    request_key,
    validate_answer,
)

__all__ = ["Completion", "LlmClient", "Structured", "parse_json", "request_key", "validate_answer"]
