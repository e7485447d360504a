"""Conversation: turn a follow-up question into a standalone retrieval query, without a model.

Chat users ask "and what about South Korea?" or "why?" after a first question. Retrieval
sees one query, so a follow-up is rewritten by carrying over the content words of the
earlier question(s):

* a **substitution** ("and what about X?", "how about X?", "as for X?", "and X?", or a bare
  noun phrase "X?") puts X in place of what was asked about: X + the content words of the
  last standalone question (so "and New Zealand?" after "and South Korea?" does not keep
  South Korea);
* an **ellipsis** ("why?", "how so?", "where?", "tell me more") has no content words of its
  own: the question + the content words of the previous (resolved) question;
* an **anaphora** (it, they, them, this, those, "that" as a pronoun, ...) points back: the
  question + the content words of the previous (resolved) question.

An ellipsis or an anaphora has no subject of its own, so it also carries the content words
of the previous turn's answer, when the caller gives the answers: "how do I restart it?"
after "Which toner does the printer on floor 5 use?" / "The printer on floor 5 uses toner
cartridge CF-259X." carries "printer floor 5 ... CF-259X", which names the floor 5 section.
Such a query finds the right passage, but its carried words would also pick the sentence
that answered the earlier turn; so a follow-up with words of its own ("restart") also has a
``focus``, its own words, by which the answering sentence is chosen.

Anything else is a standalone question and is searched as asked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

FollowUpKind = Literal["standalone", "substitution", "ellipsis", "anaphora"]

MAX_CARRIED_WORDS = 20

_WORD = re.compile(r"\w[\w’'\-]*")


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


QUESTION_WORDS = _wordset("what which who whom whose when where why how whether")
AUXILIARIES = _wordset(
    """is are was were be been being am do does did done have has had having will would
    shall should can could may might must"""
)
PRONOUNS = _wordset(
    """it its itself they them their theirs themselves this these those he him his himself
    she her hers herself"""
)
POSSESSIVES = _wordset("its their theirs his her hers")
# Words after which "that" is a pronoun ("why is that", "what does that mean", "is that so").
_THAT_PRONOUN_NEXT = _wordset(
    """mean means meant happen happened matter matters work works true right so important
    is was does did"""
)
# Words that carry no topic of their own in a follow-up ("tell me more", "for example").
FILLERS = _wordset(
    """tell me more explain elaborate detail details example examples please go on continue
    else really exactly specifically mean means meant say says said else also too either
    instead then ok okay yes no not sure thanks thank one ones again further"""
)
STOPWORDS = (
    _wordset(
        """a an the and or but nor so of to in on at by for with about against between into
        through during before after above below from up down out off over under than too very
        just also only own same such both each few other some any all most no not there here
        i me my we our us you your if because as until while again once whatever anything
        something nothing any every own get got make made do did"""
    )
    | QUESTION_WORDS
    | AUXILIARIES
    | PRONOUNS
    | FILLERS
    | frozenset(["that"])
)

# Leading words that attach a question to the previous one.
_CONNECTORS = re.compile(r"^(?:(?:and|but|also|so|then|ok|okay|well|now)\b[\s,]*)+", re.IGNORECASE)
# "what about X", "how about X", "what of X", "as for X", "same for X", "and for X".
_SUBSTITUTION = re.compile(
    r"^(?:what|how)\s+about\b|^what\s+of\b|^as\s+for\b|^same\s+(?:for|with|about)\b|^for\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Rewrite:
    """The question as asked and the query retrieval should use for it."""

    question: str
    query: str
    kind: FollowUpKind
    focus: str | None = None  # what the answering sentence should match, when not the query
    rewritten_by: str = "rules"  # or "llm:<model>"

    @property
    def follow_up(self) -> bool:
        return self.kind != "standalone"


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def content_words(text: str) -> list[str]:
    """Words that carry the topic, in order, without repeats (case-insensitive)."""
    seen: set[str] = set()
    out: list[str] = []
    for word in words(text):
        key = word.lower().replace("’", "'")
        if key in STOPWORDS or key in seen:
            continue
        seen.add(key)
        out.append(word)
    return out


def _anaphoric(tokens: list[str]) -> bool:
    """A pronoun that points outside the question itself."""
    lowered = [t.lower() for t in tokens]
    for i, word in enumerate(lowered):
        if word == "that":
            nxt = lowered[i + 1] if i + 1 < len(lowered) else None
            if nxt is None or nxt in _THAT_PRONOUN_NEXT:
                return True
            if i + 2 == len(lowered) and nxt not in STOPWORDS:
                return True  # "how do I restart that printer?": a demonstrative, pointing back
            continue
        if word == "there" and i == len(lowered) - 1 and i > 0:
            return True  # "what happened there?"
        if word not in PRONOUNS:
            continue
        if word in POSSESSIVES and any(
            t[:1].isupper() and t.lower() not in STOPWORDS for t in tokens[1:i]
        ):
            continue  # "Why is NATO extending its influence?": its = NATO, in the question
        return True
    return False


def classify(question: str) -> tuple[FollowUpKind, str]:
    """What kind of follow-up the question is, and its own part (connectors removed)."""
    text = question.strip()
    stripped = _CONNECTORS.sub("", text)
    had_connector = stripped != text
    match = _SUBSTITUTION.match(stripped)
    if match:
        rest = stripped[match.end() :].strip(" ,?!.")
        return ("substitution" if content_words(rest) else "anaphora"), rest or stripped
    tokens = words(stripped)
    own = content_words(stripped)
    lowered = [t.lower() for t in tokens]
    starts_like_question = bool(lowered) and (
        lowered[0] in QUESTION_WORDS or lowered[0] in AUXILIARIES
    )
    bare = len(tokens) <= 3 and text.endswith("?")  # "South Korea?", "Japan too?"
    if own and not starts_like_question and ((had_connector and len(tokens) <= 4) or bare):
        # "and South Korea?", "and the Madrid one?", "and from a defense perspective?"
        return "substitution", stripped.strip(" ,?!.")
    if not own:
        return "ellipsis", stripped or text
    if _anaphoric(tokens):
        return "anaphora", stripped
    return "standalone", text


def _join(own: str, carried: Sequence[str]) -> str:
    """The follow-up, its content words once more, then the carried context words.

    Repeating the new words keeps them from being drowned by the context in a mean-pooled
    embedding: "and New Zealand?" must find New Zealand, not the talks in general.
    """
    present = {w.lower() for w in words(own)}
    extra = [w for w in carried if w.lower() not in present][:MAX_CARRIED_WORDS]
    return " ".join([own.strip(), *content_words(own), *extra]).strip()


_SOURCES = re.compile(r"\n\s*Sources:\s*\n.*", re.DOTALL)
_MARKERS = re.compile(r"\[\d+(?:\s*,\s*\d+)*\]")


def answer_text(reply: str) -> str:
    """The answer part of an assistant reply: without its Sources list and ``[n]`` markers."""
    return _MARKERS.sub("", _SOURCES.sub("", reply)).strip()


def rewrite(questions: Sequence[str], answers: Sequence[str] = ()) -> Rewrite:
    """The standalone query for the last of ``questions`` (the user's turns, oldest first).

    ``answers[i]``, when given, is the assistant's reply to ``questions[i]`` ("" for none);
    an ellipsis or anaphora carries the content words of the reply to the turn before it
    (after those of that turn's question; :data:`MAX_CARRIED_WORDS` in all).
    Raises ValueError when ``questions`` is empty.
    """
    if not questions:
        raise ValueError("rewrite needs at least one question")
    base = ""  # the last standalone question: what a substitution replaces part of
    previous = ""  # the resolved query of the previous turn: what a pronoun points to
    previous_answer = ""  # the reply to the previous turn: what a pronoun may point into
    result = Rewrite(questions[0], questions[0], "standalone")
    for i, question in enumerate(questions):
        kind, own = classify(question)
        focus = None
        if not previous:
            kind = "standalone"
        if kind == "standalone":
            query = question.strip()
            base = query
        elif kind == "substitution":
            query = _join(own, content_words(base))
        else:
            carried = content_words(f"{previous}\n{answer_text(previous_answer)}")
            query = _join(own, carried)
            if kind == "anaphora" and content_words(own):
                focus = own.strip()
        previous = query
        previous_answer = answers[i] if i < len(answers) else ""
        result = Rewrite(question, query, kind, focus)
    return result


__all__ = ["Rewrite", "answer_text", "classify", "content_words", "rewrite"]
