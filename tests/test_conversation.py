from __future__ import annotations

import pytest

from qa.conversation import classify, content_words, rewrite

LEAD = "Which countries lead the partnership talks with NATO?"


def test_a_first_question_is_searched_as_asked() -> None:
    rw = rewrite([LEAD])
    assert rw.query == LEAD and rw.kind == "standalone" and not rw.follow_up


def test_what_about_x_puts_x_first_and_keeps_the_topic_of_the_question_before() -> None:
    rw = rewrite([LEAD, "and what about South Korea?"])
    assert rw.kind == "substitution" and rw.follow_up
    assert rw.question == "and what about South Korea?"
    assert rw.query.startswith("South Korea")
    for word in ("countries", "lead", "partnership", "talks", "NATO"):
        assert word in rw.query.split()
    assert "what" not in rw.query.lower().split() and "about" not in rw.query.split()


@pytest.mark.parametrize(
    ("follow_up", "entity"),
    [
        ("and what about South Korea?", "South Korea"),
        ("What about South Korea", "South Korea"),
        ("How about South Korea?", "South Korea"),
        ("and South Korea?", "South Korea"),
        ("South Korea?", "South Korea"),
        ("As for South Korea?", "South Korea"),
        ("ok, and what of South Korea?", "South Korea"),
        ("And the Madrid one?", "the Madrid one"),
    ],
)
def test_substitution_patterns(follow_up: str, entity: str) -> None:
    kind, own = classify(follow_up)
    assert (kind, own) == ("substitution", entity)
    assert rewrite([LEAD, follow_up]).query.startswith(entity)


def test_a_second_substitution_replaces_the_first_entity() -> None:
    rw = rewrite([LEAD, "and what about South Korea?", "and New Zealand?"])
    assert rw.query.startswith("New Zealand")
    assert "Korea" not in rw.query
    assert {"partnership", "talks", "NATO"} <= set(rw.query.split())


@pytest.mark.parametrize(
    "follow_up", ["why?", "Why?", "how so?", "and why?", "where?", "why not?", "Tell me more"]
)
def test_ellipsis_carries_the_previous_question(follow_up: str) -> None:
    rw = rewrite(["Why is NATO engaging the Indo-Pacific?", follow_up])
    assert rw.kind == "ellipsis"
    assert rw.query.lower().startswith(follow_up.lower().removeprefix("and "))
    assert {"NATO", "engaging", "Indo-Pacific"} <= set(rw.query.split())


def test_ellipsis_after_a_substitution_keeps_the_substituted_entity() -> None:
    rw = rewrite([LEAD, "and what about South Korea?", "why?"])
    assert rw.kind == "ellipsis"
    assert rw.query.startswith("why?")
    assert {"South", "Korea", "partnership", "NATO"} <= set(rw.query.split())


@pytest.mark.parametrize(
    "follow_up",
    [
        "What have they agreed?",
        "When did they sign it?",
        "Why is that?",
        "What does that mean?",
        "Is this new?",
        "Who are those partners?",
        "What happened there?",
    ],
)
def test_pronouns_point_back(follow_up: str) -> None:
    rw = rewrite([LEAD, follow_up])
    assert rw.kind in ("anaphora", "ellipsis")
    assert rw.query.startswith(follow_up)
    assert {"countries", "partnership", "NATO"} <= set(rw.query.split())


@pytest.mark.parametrize(
    "question",
    [
        "Which document says that China is a threat?",  # "that" joins a clause
        "Why is NATO extending its influence to the Asia-Pacific?",  # its = NATO
        "Is there a summit in Vilnius?",  # existential "there"
        "NATO summits",  # a new short topic, not asked as a follow-up
        "What is the Individually Tailored Partnership Programme?",
    ],
)
def test_standalone_questions_are_left_alone_even_after_others(question: str) -> None:
    rw = rewrite([LEAD, question])
    assert rw.kind == "standalone"
    assert rw.query == question


def test_a_follow_up_as_the_first_message_is_searched_as_asked() -> None:
    rw = rewrite(["and what about South Korea?"])
    assert rw.kind == "standalone" and rw.query == "and what about South Korea?"


def test_the_carried_context_is_bounded() -> None:
    long_question = " ".join(f"topic{i}" for i in range(200)) + "?"
    rw = rewrite([long_question, "why?"])
    assert len(rw.query.split()) <= 1 + 20


def test_content_words_drop_stopwords_and_repeats_and_keep_order() -> None:
    assert content_words("Which countries lead the talks with NATO, and why do the countries?") == [
        "countries",
        "lead",
        "talks",
        "NATO",
    ]
    assert content_words("China’s goals in the Indo-Pacific") == [
        "China’s",
        "goals",
        "Indo-Pacific",
    ]


def test_rewrite_needs_a_question() -> None:
    with pytest.raises(ValueError, match="at least one"):
        rewrite([])
