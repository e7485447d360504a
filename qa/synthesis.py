"""Synthesis: optionally, a language model writes the answer from the retrieved passages.

Any OpenAI-compatible server works (vLLM, Ollama, llama.cpp, ...): one ``POST
{QA_LLM_BASE_URL}/chat/completions`` over httpx. The model sees only the numbered passages
and must cite them as ``[n]``; markers that name no retrieved passage are removed. When the
call fails, times out, returns something unusable or cites nothing, the caller keeps the
extractive answer and the reason is logged.

The same model also rewrites a chat follow-up ("how do I restart it?") into a standalone
question from the conversation so far (:meth:`Synthesizer.standalone`); on failure, timeout
or an unusable reply the caller keeps the rule-based rewrite of qa.conversation.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from qa.schema import Passage
from qa.settings import Settings

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You answer questions about a collection of documents. Use only the numbered passages "
    "you are given, never outside knowledge. After each statement, cite the passage(s) it "
    "comes from with their numbers in square brackets, like [1] or [2][3]. Be brief: a few "
    "sentences. If the passages do not answer the question, reply exactly: The documents do "
    "not cover this question."
)

REWRITE_PROMPT = (
    "You rewrite the last question of a conversation so that it can be understood without "
    "the conversation: replace pronouns and references (it, they, that one, there) with "
    "what they refer to in the earlier questions and answers, and keep everything else as "
    "the user asked it. Do not answer it. Reply with the rewritten question only, on one "
    "line."
)
EARLIER_TURNS_FOR_REWRITE = 3
ANSWER_CHARS_FOR_REWRITE = 600
_REWRITE_LABEL = re.compile(r"^(?:standalone|rewritten)?\s*question\s*:\s*", re.IGNORECASE)

_MARKER_GROUP = re.compile(r"\s*\[(\d+(?:\s*,\s*\d+)*)\]")


@dataclass(frozen=True)
class Synthesis:
    text: str
    cited: list[int]  # markers present in text, in order of first use
    model: str


def clean_markers(text: str, valid: int) -> tuple[str, list[int]]:
    """Keep ``[n]`` markers with 1 <= n <= valid, drop the others; ``[1, 2]`` → ``[1][2]``."""
    cited: list[int] = []

    def replace(match: re.Match[str]) -> str:
        numbers = [int(n) for n in re.findall(r"\d+", match.group(1))]
        kept = [n for n in numbers if 1 <= n <= valid]
        for n in kept:
            if n not in cited:
                cited.append(n)
        if not kept:
            return ""
        lead = match.group(0)[: len(match.group(0)) - len(match.group(0).lstrip())]
        return lead + "".join(f"[{n}]" for n in dict.fromkeys(kept))

    cleaned = _MARKER_GROUP.sub(replace, text)
    cleaned = re.sub(r"[ \t]+([.,;:!?])", r"\1", cleaned)  # "claim [7]." → "claim."
    return cleaned.strip(), cited


def _source_line(n: int, passage: Passage) -> str:
    c = passage.citation
    where = f"{c.path}, lines {c.line_start}-{c.line_end}"
    if c.page:
        where += f", page {c.page}"
    return f"[{n}] {c.title} ({where})\n{passage.text.strip()}"


def build_messages(
    question: str, passages: Sequence[Passage], earlier: Sequence[str] = ()
) -> list[dict[str, str]]:
    """The chat messages sent to the model: instructions, passages, the question."""
    parts = ["Passages:\n\n" + "\n\n".join(_source_line(p.rank, p) for p in passages)]
    if earlier:
        parts.append(
            "Earlier questions in this conversation (for context only):\n"
            + "\n".join(f"- {q}" for q in earlier)
        )
    parts.append(f"Question: {question}")
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "\n\n".join(parts)},
    ]


def build_rewrite_messages(
    questions: Sequence[str], answers: Sequence[str], question: str
) -> list[dict[str, str]]:
    """The chat messages asking for a standalone form of ``question``.

    ``questions``/``answers``: the earlier user turns and the assistant's reply to each
    (answers without Sources and markers; "" for none), oldest first; the last
    :data:`EARLIER_TURNS_FOR_REWRITE` are sent, each answer cut to
    :data:`ANSWER_CHARS_FOR_REWRITE` characters.
    """
    lines = []
    pairs = list(zip(questions, [*answers, *[""] * len(questions)], strict=False))
    for asked, answered in pairs[-EARLIER_TURNS_FOR_REWRITE:]:
        lines.append(f"User: {asked.strip()}")
        if answered.strip():
            lines.append(f"Assistant: {answered.strip()[:ANSWER_CHARS_FOR_REWRITE]}")
    conversation = "\n".join(lines)
    return [
        {"role": "system", "content": REWRITE_PROMPT},
        {
            "role": "user",
            "content": f"Conversation:\n{conversation}\n\nLast question: {question.strip()}",
        },
    ]


def clean_rewrite(text: str, max_chars: int) -> str:
    """The model's standalone question, or SynthesisFailed saying why it is unusable.

    Surrounding quotes and a leading "Standalone question:" label are removed; the result
    must be one line of 1..``max_chars`` characters holding a letter or digit.
    """
    cleaned = _REWRITE_LABEL.sub("", text.strip()).strip().strip("\"'`“”‘’").strip()
    if not cleaned or not re.search(r"\w", cleaned):
        raise SynthesisFailed(f"the rewrite holds no words: {text[:200]!r}")
    if "\n" in cleaned or "\r" in cleaned:
        raise SynthesisFailed(f"the rewrite is more than one line: {text[:200]!r}")
    if len(cleaned) > max_chars:
        raise SynthesisFailed(f"the rewrite is {len(cleaned)} characters, over {max_chars}")
    return cleaned


class SynthesisFailed(Exception):
    """The model's answer cannot be used; the message says why (for the log)."""


class Synthesizer:
    """Asks the configured OpenAI-compatible model to write the answer from passages."""

    def __init__(self, settings: Settings, client: httpx.Client | None = None) -> None:
        if not settings.llm_base_url or not settings.llm_model:
            raise ValueError("Synthesizer needs QA_LLM_BASE_URL and QA_LLM_MODEL")
        self.url = f"{settings.llm_base_url}/chat/completions"
        self.model = settings.llm_model
        self.timeout = settings.llm_timeout
        self.rewrites = settings.llm_rewrite
        self.max_question_chars = settings.max_question_chars
        headers = {}
        if settings.llm_api_key is not None:
            headers["Authorization"] = f"Bearer {settings.llm_api_key.get_secret_value()}"
        self._client = client or httpx.Client(timeout=settings.llm_timeout, headers=headers)

    @classmethod
    def from_settings(cls, settings: Settings) -> Synthesizer | None:
        return cls(settings) if settings.llm_base_url else None

    def close(self) -> None:
        self._client.close()

    def write(
        self, question: str, passages: Sequence[Passage], earlier: Sequence[str] = ()
    ) -> Synthesis | None:
        """The model's cited answer, or None (reason logged) when it cannot be used."""
        if not passages:
            return None
        try:
            text = self._complete(build_messages(question, passages, earlier))
            cleaned, cited = clean_markers(text, len(passages))
            if not cited:
                raise SynthesisFailed(f"the answer cites no retrieved passage: {text[:200]!r}")
        except httpx.TimeoutException:
            log.warning(
                "language model at %s did not answer within %ss; using the extractive answer",
                self.url,
                self.timeout,
            )
            return None
        except (httpx.HTTPError, SynthesisFailed) as exc:
            log.warning(
                "language model at %s failed (%s); using the extractive answer", self.url, exc
            )
            return None
        return Synthesis(text=cleaned, cited=cited, model=self.model)

    def standalone(
        self, questions: Sequence[str], answers: Sequence[str], question: str
    ) -> str | None:
        """``question`` rewritten by the model to stand alone, or None (reason logged).

        ``questions`` and ``answers`` are the earlier turns (see build_rewrite_messages).
        Never raises for the model's failures: HTTP errors, timeouts (QA_LLM_TIMEOUT) and
        unusable replies all return None, and the caller keeps the rule-based rewrite.
        """
        try:
            text = self._complete(build_rewrite_messages(questions, answers, question))
            return clean_rewrite(text, self.max_question_chars)
        except httpx.TimeoutException:
            reason = f"no answer within {self.timeout}s"
        except (httpx.HTTPError, SynthesisFailed) as exc:
            reason = str(exc) or type(exc).__name__
        log.warning(
            "language model at %s could not rewrite the follow-up (%s); "
            "using the rule-based rewrite",
            self.url,
            reason,
        )
        return None

    def _complete(self, messages: list[dict[str, str]]) -> str:
        body = {"model": self.model, "messages": messages, "temperature": 0, "stream": False}
        response = self._client.post(self.url, json=body)
        if response.status_code != 200:
            raise SynthesisFailed(f"HTTP {response.status_code}: {response.text[:200]!r}")
        try:
            data: Any = response.json()
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise SynthesisFailed(
                f"not an OpenAI chat completion ({type(exc).__name__}): {response.text[:200]!r}"
            ) from None
        if not isinstance(content, str) or not content.strip():
            raise SynthesisFailed("the answer is empty")
        return content


__all__ = [
    "Synthesis",
    "Synthesizer",
    "build_messages",
    "build_rewrite_messages",
    "clean_markers",
    "clean_rewrite",
]
