"""Document text printed by the CLI can never control the terminal (qa/terminal.py)."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

import qa.engine
from qa.assemble import spec_from_settings
from qa.builder import build_index
from qa.cli import app
from qa.settings import Settings
from qa.terminal import json_for_terminal, plain, shown
from tests.fakes import FakeEmbedder

CASE = Path(__file__).parent / "data" / "cases" / "terminal-escapes"
VAULT = (CASE / "vault.txt").read_text("utf-8")

# Any control character a terminal acts on: C0 but tab and line feed, DEL, C1.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# What rich itself writes for styles: Select Graphic Rendition, nothing else.
SGR = re.compile(r"\x1b\[[0-9;]*m")


def render(text: str, style: str = "") -> str:
    """What a colour terminal receives when the CLI prints ``shown(text)``."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="truecolor", soft_wrap=True)
    console.print(shown(text, style))
    return out.getvalue()


def test_the_case_file_is_shown_escaped_and_literal() -> None:
    assert plain(VAULT) == (
        "Vault procedures\n\nThe vault code is changed every Friday."
        "\\x1b[2K\\x1b[1A\\x1b[2K\\x1b]0;owned-title\\x1b\\ Ask the duty manager"
        "\\x1b[8m hidden text\\x1b[28m for the new code.\n"
        "See \\x1b]8;;https://example.invalid/phish\\x1b\\the intranet page\\x1b]8;;\\x1b\\ "
        "for details. [/] [bold]not markup[/bold] \\\n"
    )
    sent = render(VAULT)
    assert SGR.sub("", sent) == plain(VAULT) + "\n"
    assert not CONTROL.sub("", SGR.sub("", sent)).count("\x1b")


@pytest.mark.parametrize(
    ("sequence", "kind"),
    [
        ("\x1b[2J\x1b[H", "CSI clear screen, cursor home"),
        ("\x1b[1A\x1b[2K", "CSI cursor up, erase line"),
        ("\x1b]0;title\x07", "OSC window title, BEL-terminated"),
        ("\x1b]0;title\x1b\\", "OSC window title, ST-terminated"),
        ("\x1b]8;;https://evil.invalid\x1b\\click\x1b]8;;\x1b\\", "OSC 8 hyperlink"),
        ("\x1b]52;c;cHduZWQ=\x07", "OSC 52 clipboard write"),
        ("\x1bP+q544e\x1b\\", "DCS request"),
        ("\x1b_APC payload\x1b\\", "APC string"),
        ("\x9b2J\x9d0;title\x9c", "8-bit CSI, OSC and ST"),
        ("\x1bc", "RIS full reset"),
        ("\x1b", "a lone ESC"),
        ("\x1b[", "an unfinished CSI"),
        ("a\x08\x08b\x07\x00\x7f", "backspace, bell, NUL, DEL"),
    ],
)
def test_no_sequence_reaches_the_terminal(sequence: str, kind: str) -> None:
    text = f"before {sequence} after"
    sent = render(text, "reverse")
    styles_removed = SGR.sub("", sent)
    assert not CONTROL.search(styles_removed), kind
    assert styles_removed == plain(text) + "\n"
    assert styles_removed.startswith("before ") and styles_removed.endswith(" after\n")


@pytest.mark.parametrize(
    "text",
    [
        "[bold]not markup[/bold]",
        "[link=https://evil.invalid]click[/link]",
        "[/] [red] [@click=app.quit]",
        "ends with one backslash \\",
        "two \\\\ and \\[escaped]",
        ":warning: :smile: emoji codes stay words",
        "日本語 العربية café",
    ],
)
def test_markup_and_backslashes_print_literally(text: str) -> None:
    assert plain(text) == text
    out = io.StringIO()
    Console(file=out, soft_wrap=True, width=200).print(shown(text))
    assert out.getvalue() == text + "\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("a\r\nb", "a\nb"), ("a\rb", "a\nb"), ("a\n\rb", "a\n\nb"), ("a\tb", "a\tb")],
)
def test_carriage_returns_end_lines_and_never_overwrite_one(text: str, expected: str) -> None:
    assert plain(text) == expected


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=200))
def test_whatever_the_text_only_styles_reach_the_terminal(text: str) -> None:
    shown_text = plain(text)
    assert not CONTROL.search(shown_text)
    assert not CONTROL.search(shown(text).plain) and shown(text).plain == shown_text
    sent = SGR.sub("", render(text, "bold"))
    assert not CONTROL.search(sent)
    if "\t" not in text:  # rich expands tabs to spaces
        assert sent == shown_text + "\n"
    # nothing is lost: the escapes undo to the text (line ends aside)
    undone = re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), shown_text)
    if "\\x" not in text:
        assert undone == re.sub(r"\r\n?", "\n", text)


@given(st.text(max_size=100))
def test_json_output_keeps_the_data_and_escapes_c1(text: str) -> None:
    encoded = json_for_terminal(json.dumps({"t": text}, ensure_ascii=False))
    assert json.loads(encoded) == {"t": text}
    assert not CONTROL.search(encoded)


def test_qa_ask_prints_the_case_file_safely(tmp_path: Path, monkeypatch) -> None:
    """The real CLI command, in process, on an index of the case file (fake embedder)."""
    corpus = tmp_path / "corpus"
    shutil.copytree(CASE, corpus)
    settings = Settings(
        corpus_dir=corpus, index_dir=tmp_path / "index", embedding_model="fake-embedder"
    )
    build_index(corpus, tmp_path / "index", FakeEmbedder(), spec_from_settings(settings))
    monkeypatch.setattr(qa.engine, "embedder_from_settings", lambda _: FakeEmbedder())
    env = {
        "QA_CORPUS_DIR": str(corpus),
        "QA_INDEX_DIR": str(tmp_path / "index"),
        "QA_EMBEDDING_MODEL": "fake-embedder",
        "QA_MIN_SCORE": "-1",
        "COLUMNS": "400",
    }
    shown_out = CliRunner().invoke(
        app, ["ask", "When is the vault code changed?", "-k", "1"], env=env
    )
    assert shown_out.exit_code == 0, shown_out.output
    out = shown_out.output
    assert not CONTROL.search(out)
    assert "Ask the duty manager\\x1b[8m hidden text\\x1b[28m for the new code." in out
    assert "\\x1b]8;;https://example.invalid/phish\\x1b\\the intranet page" in out
    assert "for details. [/] [bold]not markup[/bold] \\\n" in out
    as_json = CliRunner().invoke(app, ["ask", "vault", "--json"], env=env)
    assert as_json.exit_code == 0 and not CONTROL.search(as_json.output)
    passage = json.loads(as_json.output)["passages"][0]
    assert passage["text"] == VAULT[passage["citation"]["start"] : passage["citation"]["end"]]
