"""Chat: answer the last user turn of a conversation, with numbered sources.

The chat endpoint and any other chat front end call this. It resolves follow-ups
(qa.conversation), asks the Engine, lets the optional language model write the answer
(qa.synthesis) and formats a readable reply: the answer with ``[n]`` markers, then a
"Sources" list whose entries are the same citations returned machine-readable.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from qa.conversation import Rewrite, answer_text, classify, rewrite
from qa.engine import ABSTAIN_MESSAGE, Engine
from qa.errors import InvalidRequest, QAError
from qa.schema import AskResponse, Citation, NumberedCitation, Passage
from qa.synthesis import Synthesizer

ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant")

EARLIER_QUESTIONS_FOR_MODEL = 3


@dataclass(frozen=True)
class Turn:
    role: str
    content: str


@dataclass(frozen=True)
class ChatReply:
    text: str  # the answer, then the Sources list
    answer: str  # the answer alone
    citations: list[NumberedCitation]
    rewrite: Rewrite
    result: AskResponse
    written_by: str  # "extractive" or "llm:<model>"

    @property
    def abstained(self) -> bool:
        return self.result.abstained


def user_questions(turns: Sequence[Turn]) -> list[str]:
    questions = [t.content for t in turns if t.role == "user"]
    if not questions:
        raise InvalidRequest("messages must include at least one message with role 'user'")
    return questions


def assistant_answers(turns: Sequence[Turn]) -> list[str]:
    """The assistant's reply to each user turn ("" where none, or where it abstained)."""
    answers: list[str] = []
    for turn in turns:
        if turn.role == "user":
            answers.append("")
        elif turn.role == "assistant" and answers:
            text = answer_text(turn.content)
            if text and text != ABSTAIN_MESSAGE:
                answers[-1] = f"{answers[-1]}\n{text}".strip()
    return answers


def found_answers(engine: Engine, questions: Sequence[str], answers: Sequence[str]) -> list[str]:
    """``answers`` with, for the turn before the last, the sentence qa answers it with.

    A follow-up that points back ("how do I restart it?") carries the words of the previous
    answer; the reply the client sent back may not name the subject (a model's wording, or
    no assistant message at all), so the previous turn is asked again (one search) and its
    extractive answer sentence is added. Only for an anaphora or ellipsis; a previous turn
    that fails or abstains adds nothing.
    """
    out = list(answers)
    if len(questions) < 2 or classify(questions[-1])[0] not in ("anaphora", "ellipsis"):
        return out
    earlier = rewrite(questions[:-1], answers[: len(questions) - 1])
    try:
        found = engine.ask(
            earlier.query[: engine.settings.max_question_chars], 1, focus=earlier.focus
        )
    except QAError:
        return out
    if found.answer is not None and not found.abstained:
        out[len(questions) - 2] = f"{out[len(questions) - 2]}\n{found.answer.text}".strip()
    return out


def source_line(marker: int, citation: Citation) -> str:
    """``[1] Title — path, lines 12-16`` (the title is left out when it is the path)."""
    where = f"{citation.path}, lines {citation.line_start}-{citation.line_end}"
    if citation.line_start == citation.line_end:
        where = f"{citation.path}, line {citation.line_start}"
    if citation.page:
        where += f", page {citation.page}"
    if citation.title and citation.title != citation.path:
        return f"[{marker}] {citation.title} — {where}"
    return f"[{marker}] {where}"


def format_reply(answer: str, citations: Sequence[NumberedCitation]) -> str:
    if not citations:
        return answer
    # A markdown list, so chat UIs that render markdown keep one source per line.
    sources = "\n".join(f"- {source_line(c.marker, c.citation)}" for c in citations)
    return f"{answer}\n\nSources:\n{sources}"


def _numbered(passages: Sequence[Passage], markers: Sequence[int]) -> list[NumberedCitation]:
    by_rank = {p.rank: p for p in passages}
    return [
        NumberedCitation(marker=m, citation=by_rank[m].citation, text=by_rank[m].text)
        for m in sorted(set(markers))
        if m in by_rank
    ]


def reply(
    engine: Engine,
    turns: Sequence[Turn],
    top_k: int | None = None,
    synthesizer: Synthesizer | None = None,
) -> ChatReply:
    """Answer the last user turn; earlier user turns resolve follow-ups."""
    questions = user_questions(turns)
    question = engine.validate_question(questions[-1])
    answers = assistant_answers(turns)
    rw = rewrite([*questions[:-1], question], found_answers(engine, questions, answers))
    timings: dict[str, float] = {}
    if synthesizer is not None and synthesizer.rewrites and len(questions) > 1:
        began = time.perf_counter()
        standalone = synthesizer.standalone(questions[:-1], answers[:-1], question)
        timings["rewrite"] = round((time.perf_counter() - began) * 1000, 2)
        if standalone is not None:
            rw = replace(rw, query=standalone, rewritten_by=f"llm:{synthesizer.model}")
    query = rw.query[: engine.settings.max_question_chars]
    result = engine.ask(query, top_k, focus=rw.focus)
    result.timings_ms.update(timings)
    if result.abstained or result.answer is None:
        return ChatReply(
            text=ABSTAIN_MESSAGE,
            answer=ABSTAIN_MESSAGE,
            citations=[],
            rewrite=rw,
            result=result,
            written_by="extractive",
        )
    answer, markers, written_by = result.answer.text, result.answer.citations, "extractive"
    if synthesizer is not None:
        began = time.perf_counter()
        earlier = questions[:-1][-EARLIER_QUESTIONS_FOR_MODEL:]
        synthesis = synthesizer.write(question, result.passages, earlier)
        result.timings_ms["synthesis"] = round((time.perf_counter() - began) * 1000, 2)
        if synthesis is not None:
            answer, markers, written_by = synthesis.text, synthesis.cited, f"llm:{synthesis.model}"
    citations = _numbered(result.passages, markers)
    return ChatReply(
        text=format_reply(answer, citations),
        answer=answer,
        citations=citations,
        rewrite=rw,
        result=result,
        written_by=written_by,
    )


__all__ = ["ROLES", "ChatReply", "Turn", "format_reply", "reply", "source_line"]
