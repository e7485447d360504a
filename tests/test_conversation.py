from __future__ import annotations

import pytest

from qa.conversation import answer_text, classify, content_words, rewrite

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


# ------------------------------------------------- follow-ups that point into the answer

PRINTER_QUESTION = "Which toner does the printer on floor 5 use?"
PRINTER_REPLY = (
    "The printer on floor 5 uses toner cartridge CF-259X. [1]\n\n"
    "Sources:\n- [1] Printers — printers.md, lines 7-9"
)


def test_a_pronoun_carries_the_subject_of_the_question_and_its_answer() -> None:
    rw = rewrite([PRINTER_QUESTION, "how do I restart it?"], [PRINTER_REPLY])
    assert rw.kind == "anaphora"
    assert rw.query.startswith("how do I restart it?")
    assert {"printer", "floor", "5", "CF-259X", "cartridge"} <= set(rw.query.split())
    assert "Sources" not in rw.query and "printers.md" not in rw.query and "[1]" not in rw.query
    # the carried words find the floor 5 passage; the follow-up's own words pick its answer
    assert rw.focus == "how do I restart it?"


def test_the_subject_may_be_only_in_the_answer() -> None:
    """A general rule, not printers: the earlier question asked *which*; the answer named it."""
    rw = rewrite(
        ["Which team maintains the billing service?", "how do I reach them?"],
        ["The payments team in Oslo maintains the billing service. [1]"],
    )
    assert rw.kind == "anaphora" and rw.focus == "how do I reach them?"
    assert {"payments", "Oslo", "billing"} <= set(rw.query.split())


def test_an_ellipsis_carries_the_answer_too_but_keeps_the_query_for_the_answer() -> None:
    rw = rewrite(["Who maintains the billing service?", "why?"], ["The payments team. [1]"])
    assert rw.kind == "ellipsis" and rw.focus is None
    assert {"billing", "payments"} <= set(rw.query.split())


def test_a_substitution_does_not_carry_the_answer() -> None:
    rw = rewrite([PRINTER_QUESTION, "and floor 3?"], [PRINTER_REPLY])
    assert rw.kind == "substitution" and rw.focus is None
    assert "CF-259X" not in rw.query and rw.query.startswith("floor 3")


def test_a_standalone_question_ignores_the_answer() -> None:
    question = "Which toner does the printer on floor 3 use?"
    rw = rewrite([PRINTER_QUESTION, question], [PRINTER_REPLY])
    assert (rw.kind, rw.query, rw.focus) == ("standalone", question, None)


def test_the_answer_to_the_turn_before_is_the_one_carried() -> None:
    rw = rewrite(
        ["Which toner does the printer on floor 3 use?", PRINTER_QUESTION, "how do I restart it?"],
        ["The printer on floor 3 uses toner cartridge TN-2420. [1]", PRINTER_REPLY],
    )
    assert "CF-259X" in rw.query.split() and "TN-2420" not in rw.query.split()


def test_that_before_a_last_noun_points_back() -> None:
    assert classify("and how do I restart that printer?")[0] == "anaphora"
    assert classify("Which document says that China is a threat?")[0] == "standalone"


def test_carried_answer_words_are_bounded_too() -> None:
    long_answer = " ".join(f"fact{i}" for i in range(200)) + "."
    rw = rewrite(["Which facts matter?", "how do I check them?"], [long_answer])
    own = "how do I check them?"
    assert len(rw.query.split()) <= len(own.split(" ")) + 1 + 20


@pytest.mark.parametrize(
    ("reply", "answer"),
    [
        (PRINTER_REPLY, "The printer on floor 5 uses toner cartridge CF-259X."),
        ("A [1][2] and B [1, 3].", "A  and B ."),
        ("No sources here.", "No sources here."),
    ],
)
def test_answer_text_drops_sources_and_markers(reply: str, answer: str) -> None:
    assert answer_text(reply) == answer
