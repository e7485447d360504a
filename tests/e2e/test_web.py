"""The web page in a real browser: headless Chromium against a real `qa serve`.

Debian's chromium (/usr/bin/chromium, installed by scripts/test.sh when missing) is driven
by Playwright's Python package; nothing is downloaded. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from tests.conftest import DEFAULT_CORPUS, ROOT
from tests.e2e.conftest import Server, qa_env, start_server, stop

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is missing and could not be installed here: scripts/test.sh "
        "installs it with `apt-get install -y chromium`, which needs root and apt-get",
    ),
]

playwright_api = pytest.importorskip(
    "playwright.sync_api",
    reason="the playwright package is missing; `pip install -e '.[dev]'` installs it",
)
expect = playwright_api.expect

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "tests" / "artifacts"

NATO_QUESTION = "why is NATO engaging the Indo-Pacific"
NATO_EVIDENCE = (
    "important for NATO, given that developments in that region can directly affect "
    "Euro-Atlantic security"
)
SCRIPT = "<script>window.__pwned=1</script>"
IMG = '<img src=x onerror="window.__pwned=1">'
EVIL_ID = "notes/evil <b> & #1.md"
EVIL_TEXT = f"""# {IMG} Sourdough notes 🍞

🍞🥖 Feed the sourdough starter every day with equal weights of flour and water. {SCRIPT}

Let the dough rise overnight in the fridge. {IMG} Bake the loaf in a hot covered pot.
"""


# ---------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """One headless Chromium with a fresh profile for the module."""
    with playwright_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 720},
        )
        context.set_default_timeout(30_000)
        yield context
        context.close()


@dataclass
class Tab:
    page: Page
    errors: list[str]  # uncaught exceptions in the page


@pytest.fixture
def tab(browser: BrowserContext) -> Iterator[Tab]:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield Tab(page, errors)
    page.close()
    assert not errors, errors


def shot(page: Page, name: str, *, full_page: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"web-{name}.png"), full_page=full_page)


def ask(page: Page, question: str) -> None:
    """Type the question and press Enter, then wait until the answer is in."""
    box = page.get_by_label("Question", exact=True)
    box.fill(question)
    box.press("Enter")
    expect(page.locator("#ask-button")).to_be_enabled()
    expect(page.locator("#results")).to_be_visible()


def api_ask(url: str, question: str, top_k: int = 5) -> dict[str, Any]:
    resp = httpx.post(f"{url}/v1/ask", json={"question": question, "top_k": top_k}, timeout=30)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def cited_text(page: Page) -> str:
    """The document view's highlighted span (one <mark> per line it touches)."""
    expect(page.locator("#cited")).to_be_visible()
    return "".join(page.locator("#doc-text mark").all_text_contents())


def no_horizontal_overflow(page: Page) -> None:
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.body.scrollWidth, innerWidth]"
    )
    assert widths[0] <= widths[2] and widths[1] <= widths[2], widths


def doc_link(doc_id: str, start: int, end: int, **extra: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in extra.items())
    return f"/#doc={quote(doc_id, safe='')}&start={start}&end={end}" + (
        f"&{query}" if query else ""
    )


# ---------------------------------------------------------------------- asking


def test_asking_shows_the_answer_and_highlighted_evidence(server: Server, tab: Tab) -> None:
    page = tab.page
    page.goto(server.url + "/")
    expect(page).to_have_title("qa — ask your documents")
    ask(page, NATO_QUESTION)
    expected = api_ask(server.url, NATO_QUESTION)

    first = page.locator("#passages > li").first
    evidence = first.locator("mark").text_content() or ""
    assert NATO_EVIDENCE in evidence
    top = expected["passages"][0]
    doc_text = (server.corpus / "nato-indo-pacific.txt").read_text("utf-8")
    assert evidence == doc_text[top["highlight"]["start"] : top["highlight"]["end"]]
    expect(page.locator("#answer-text")).to_contain_text(NATO_EVIDENCE)

    # every passage shows its rank, title, path and line numbers, in the API's order
    cards = page.locator("#passages > li")
    expect(cards).to_have_count(len(expected["passages"]))
    for i, p in enumerate(expected["passages"]):
        c = p["citation"]
        card = cards.nth(i)
        expect(card.locator("h4")).to_have_text(f"[{p['rank']}] {c['title']}")
        meta = card.locator(".meta")
        expect(meta).to_contain_text(c["path"])
        lines = (
            f"line {c['line_start']}"
            if c["line_start"] == c["line_end"]
            else f"lines {c['line_start']}–{c['line_end']}"
        )
        expect(meta).to_contain_text(lines)
        assert card.locator(".passage-text").text_content() == p["text"]

    assert "#q=" in page.url
    shot(page, "results", full_page=True)


def test_a_slow_answer_shows_progress(server: Server, tab: Tab) -> None:
    page = tab.page
    page.goto(server.url + "/")
    status = page.get_by_role("status")
    expect(status).to_have_attribute("aria-live", "polite")
    page.evaluate(
        """() => {
          window.__states = [];
          const record = () => window.__states.push({
            status: document.getElementById("status").textContent,
            disabled: document.getElementById("ask-button").disabled,
            busy: document.getElementById("results").getAttribute("aria-busy"),
          });
          new MutationObserver(record).observe(document.body, {
            subtree: true, childList: true, characterData: true, attributes: true,
          });
        }"""
    )
    ask(page, NATO_QUESTION)
    states = page.evaluate("window.__states")
    assert any(
        s["status"] == "Searching…" and s["disabled"] and s["busy"] == "true" for s in states
    ), states
    expect(page.locator("#ask-button")).to_have_text("Ask")
    expect(page.locator("#results")).to_have_attribute("aria-busy", "false")
    expect(status).to_have_text("Answer found, with 5 passages.")


def test_off_topic_question_says_the_documents_do_not_cover_it(server: Server, tab: Tab) -> None:
    page = tab.page
    page.goto(server.url + "/")
    ask(page, "how do I bake sourdough bread")
    verdict = page.locator("#answer")
    expect(verdict).to_have_class("answer abstained")
    expect(verdict).to_contain_text("Not in the documents")
    expect(verdict).to_contain_text("The documents do not cover this question.")
    expect(page.locator("#answer-text")).to_have_count(0)
    # the nearest passages are there for reference, folded away
    expect(page.locator("#passages")).to_be_hidden()
    page.get_by_text("Closest passages").click()
    expect(page.locator("#passages > li").first).to_be_visible()
    shot(page, "abstained", full_page=True)


# ---------------------------------------------------------------------- citations


def test_a_citation_opens_the_document_at_the_cited_span(server: Server, tab: Tab) -> None:
    page = tab.page
    page.goto(server.url + "/")
    ask(page, NATO_QUESTION)
    passages = api_ask(server.url, NATO_QUESTION)["passages"]
    # the passage furthest into the document, so that the view has to scroll to it
    last = max(range(len(passages)), key=lambda i: passages[i]["citation"]["start"])
    target = passages[last]
    page.locator("#passages > li").nth(last).get_by_role("link", name="Open in document").click()

    expect(page.locator("#doc-title")).to_have_text(target["citation"]["title"])
    assert cited_text(page) == target["text"]
    expect(page.locator("#cited")).to_be_in_viewport()
    assert page.evaluate("scrollY") > 0
    c = target["citation"]
    expect(page.locator("#doc-meta")).to_contain_text(
        f"cited lines {c['line_start']}–{c['line_end']}"
    )
    # the line numbers beside the text agree with the citation
    first_mark_line = page.locator("#cited").locator("xpath=..").get_attribute("data-line")
    assert first_mark_line == str(c["line_start"])
    # the whole document is there, as the API serves it
    served = httpx.get(f"{server.url}/v1/documents/{c['doc_id']}").json()["text"]
    assert page.locator("#doc-text").text_content() == served
    shot(page, "document")

    # the link can be shared: reloading it, or opening it elsewhere, shows the same view
    link = page.url
    assert f"start={c['start']}" in link and f"end={c['end']}" in link
    page.reload()
    assert cited_text(page) == target["text"]
    expect(page.locator("#cited")).to_be_in_viewport()
    other = page.context.new_page()
    try:
        other.goto(link)
        assert cited_text(other) == target["text"]
        expect(other.locator("#cited")).to_be_in_viewport()
        expect(other.get_by_role("link", name="← Ask a question")).to_be_visible()
    finally:
        other.close()


def test_the_answer_cites_its_passage(server: Server, tab: Tab) -> None:
    page = tab.page
    page.goto(server.url + "/")
    ask(page, NATO_QUESTION)
    top = api_ask(server.url, NATO_QUESTION)["passages"][0]
    page.locator("#answer-text").get_by_role("link", name="Source 1").click()
    assert cited_text(page) == top["text"]
    page.go_back()
    expect(page.locator("#passages > li")).to_have_count(5)


def test_bad_links_explain_themselves(server: Server, tab: Tab) -> None:
    page = tab.page
    page.goto(server.url + doc_link("missing.txt", 0, 5))
    expect(page.get_by_role("alert")).to_contain_text("no document with id 'missing.txt'")
    expect(page.locator("#doc-title")).to_have_text("The document could not be opened")

    page.goto(server.url + doc_link("nato-indo-pacific.txt", 10, 999999))
    expect(page.locator("#doc-note")).to_contain_text("not inside this document")
    expect(page.locator("#doc-text mark")).to_have_count(0)
    text = (server.corpus / "nato-indo-pacific.txt").read_text("utf-8")
    assert page.locator("#doc-text").text_content() == text

    page.goto(server.url + doc_link("nato-indo-pacific.txt", 0, 56, v="000000000000"))
    expect(page.locator("#doc-note")).to_contain_text("changed since the link was made")
    assert cited_text(page) == text[0:56]


@pytest.mark.parametrize(
    "fragment",
    [
        "#doc=..%2Findex&start=0&end=5",  # /v1/documents/../index would be /v1/index
        "#doc=..&start=0&end=5",
        "#doc=%2E%2E%2F%2E%2E%2Fhealthz",  # percent-encoded dots resolve the same way
        "#doc=notes%2F..%2F..%2Fmodels",
        "#doc=&start=0&end=5",
    ],
)
def test_a_link_that_walks_out_of_the_documents_says_so(
    server: Server, tab: Tab, fragment: str
) -> None:
    page = tab.page
    requested: list[str] = []
    page.on("request", lambda request: requested.append(urlsplit(request.url).path))
    page.goto(server.url + "/" + fragment)
    expect(page.locator("#doc-title")).to_have_text("The document could not be opened")
    expect(page.get_by_role("alert")).to_contain_text("The link")
    expect(page.locator("#doc-text")).to_be_empty()
    assert not [p for p in requested if p.startswith("/v1/")], requested


def test_an_answer_that_is_not_a_document_is_an_error_not_a_hang(server: Server, tab: Tab) -> None:
    page = tab.page
    # the server answers 200 with JSON that is not a document: the page must say so
    page.route(
        "**/v1/documents/odd.md",
        lambda route: route.fulfill(status=200, content_type="application/json", body="{}"),
    )
    page.goto(server.url + doc_link("odd.md", 0, 5))
    expect(page.locator("#doc-title")).to_have_text("The document could not be opened")
    expect(page.get_by_role("alert")).to_contain_text("not a document")


# ---------------------------------------------------------------------- keyboard, screen readers


def test_keyboard_alone(server: Server, tab: Tab) -> None:
    page = tab.page
    page.goto(server.url + "/")
    expect(page.get_by_label("Question", exact=True)).to_be_focused()  # autofocus
    page.keyboard.type(NATO_QUESTION)
    page.keyboard.press("Enter")
    expect(page.locator("#passages > li")).to_have_count(5)

    order = []
    for _ in range(5):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.className"))
    assert order == ["top-k", "ask-button", "cite", "open", "open"], order
    # focus is visible
    outline = page.evaluate(
        "(() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, s.outlineWidth]; })()"
    )
    assert outline == ["solid", "3px"], outline

    # Enter on the second passage's link opens its document; focus goes to the title
    page.keyboard.press("Enter")
    expect(page.locator("#doc-title")).to_be_focused()
    expect(page.locator("#cited")).to_be_in_viewport()
    page.keyboard.press("Shift+Tab")
    expect(page.get_by_role("link", name="← Back to results")).to_be_focused()
    page.keyboard.press("Enter")
    # back at the same results, on the link that was followed
    second_open = page.locator("#passages > li").nth(1).locator("a.open")
    expect(second_open).to_be_focused()


def test_landmarks_labels_and_live_regions(server: Server, tab: Tab) -> None:
    page = tab.page
    page.goto(server.url + "/")
    for role in ("banner", "main", "search", "contentinfo"):
        expect(page.get_by_role(role)).to_have_count(1)
    expect(page.get_by_role("heading", level=1)).to_have_text("qa")
    expect(page.get_by_role("searchbox", name="Question")).to_be_visible()
    expect(page.get_by_role("combobox", name="Passages")).to_have_value("5")
    expect(page.get_by_role("button", name="Ask")).to_be_visible()
    expect(page.get_by_role("status")).to_have_attribute("aria-live", "polite")
    ask(page, NATO_QUESTION)
    results = page.get_by_role("region", name="Results")
    expect(results).to_be_visible()
    expect(results.get_by_role("list", name="Passages").get_by_role("listitem")).to_have_count(5)
    expect(results.get_by_role("article").first).to_have_accessible_name(
        "[1] Why NATO is extending its influence to the Asia-Pacific?"
    )
    # the skip link comes first and leads to the content, keeping the view
    page.get_by_label("Question", exact=True).focus()
    page.keyboard.press("Shift+Tab")
    expect(page.get_by_role("link", name="qa")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    url = page.url
    page.keyboard.press("Enter")
    expect(page.get_by_role("main")).to_be_focused()
    assert page.url == url
    expect(results).to_be_visible()


def test_phone_sized_screen(server: Server, tab: Tab) -> None:
    page = tab.page
    page.set_viewport_size({"width": 375, "height": 740})
    page.goto(server.url + "/")
    no_horizontal_overflow(page)
    shot(page, "phone-home")
    ask(page, NATO_QUESTION)
    no_horizontal_overflow(page)
    button = page.get_by_role("button", name="Ask").bounding_box()
    assert button is not None and button["x"] + button["width"] <= 375
    shot(page, "phone-results", full_page=True)
    page.locator("#passages > li").nth(1).get_by_role("link", name="Open in document").click()
    expect(page.locator("#cited")).to_be_in_viewport()
    no_horizontal_overflow(page)
    shot(page, "phone-document")


# ---------------------------------------------------------------------- untrusted text


@pytest.fixture(scope="module")
def evil_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A second server whose corpus holds a document full of markup."""
    root = tmp_path_factory.mktemp("e2e-evil")
    corpus = root / "corpus"
    (corpus / "notes").mkdir(parents=True)
    shutil.copy(DEFAULT_CORPUS / "nato-indo-pacific.txt", corpus)
    (corpus / EVIL_ID).write_text(EVIL_TEXT, encoding="utf-8")
    env = qa_env(corpus, root / "index")
    url, proc = start_server(env)
    yield Server(url, corpus, root / "index", env, proc)
    stop(proc)


def assert_nothing_ran(page: Page) -> None:
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("main img, main script").count() == 0


def test_markup_in_documents_is_shown_as_text(evil_server: Server, tab: Tab) -> None:
    page = tab.page
    page.goto(evil_server.url + "/")
    question = "how often should I feed a sourdough starter"
    ask(page, question)
    passages = api_ask(evil_server.url, question)["passages"]
    rank = next(i for i, p in enumerate(passages) if p["citation"]["doc_id"] == EVIL_ID)
    card = page.locator("#passages > li").nth(rank)
    expect(card.locator("h4")).to_have_text(f"[{rank + 1}] {IMG} Sourdough notes 🍞")
    assert card.locator(".passage-text").text_content() == passages[rank]["text"]
    expect(card.get_by_text(SCRIPT, exact=False)).to_be_visible()
    # the evidence mark lands on the right characters even after emoji (code points vs UTF-16)
    hl = passages[rank]["highlight"]
    expect(card.locator("mark")).to_have_text(EVIL_TEXT[hl["start"] : hl["end"]])
    assert_nothing_ran(page)
    shot(page, "injection-results", full_page=True)

    card.get_by_role("link", name="Open in document").click()
    expect(page.locator("#doc-title")).to_have_text(f"{IMG} Sourdough notes 🍞")
    assert cited_text(page) == passages[rank]["text"]
    assert page.locator("#doc-text").text_content() == EVIL_TEXT
    expect(page.locator("#doc-text")).to_contain_text(SCRIPT)
    expect(page.locator("#doc-text")).to_contain_text(IMG)
    # an id with '/', '<', '&', '#' and spaces survives the trip through the URL
    assert parse_qs(urlsplit(page.url).fragment)["doc"] == [EVIL_ID]
    assert_nothing_ran(page)
    shot(page, "injection-document")

    page.reload()
    assert cited_text(page) == passages[rank]["text"]
    assert_nothing_ran(page)


def test_a_span_after_emoji_is_marked_exactly(evil_server: Server, tab: Tab) -> None:
    start = EVIL_TEXT.index("Feed")
    end = EVIL_TEXT.index(SCRIPT) + len(SCRIPT)
    page = tab.page
    page.goto(evil_server.url + doc_link(EVIL_ID, start, end))
    assert cited_text(page) == EVIL_TEXT[start:end]
    expect(page.locator("#doc-meta")).to_contain_text(f"characters {start}–{end}")
    assert_nothing_ran(page)


# ---------------------------------------------------------------------- errors


@pytest.fixture
def unready_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`qa serve` without an index (so /v1/ask is 503) and a 40-character question limit."""
    (tmp_path / "corpus").mkdir()
    env = qa_env(tmp_path / "corpus", tmp_path / "index", QA_MAX_QUESTION_CHARS="40")
    url, proc = start_server(env, "--no-build", wait_for="/healthz")
    yield url, proc
    stop(proc)


def test_errors_show_as_messages(
    unready_server: tuple[str, subprocess.Popen[bytes]], tab: Tab
) -> None:
    url, proc = unready_server
    page = tab.page
    page.goto(url + "/")
    alert = page.get_by_role("alert")
    box = page.get_by_label("Question", exact=True)

    box.press("Enter")  # nothing typed
    expect(alert).to_have_text("Type a question first.")
    expect(box).to_be_focused()

    long_question = "a question that is longer than forty characters"
    box.fill(long_question)
    box.press("Enter")
    expect(alert).to_contain_text(
        f"question is {len(long_question)} characters long; the limit is 40"
    )
    expect(alert).to_contain_text("HTTP 422, invalid_request")

    box.fill("what is NATO")
    box.press("Enter")
    expect(alert).to_contain_text("the index is not loaded yet")
    expect(alert).to_contain_text("HTTP 503, index_not_ready")
    expect(page.locator("#results")).to_be_hidden()
    expect(page.locator("#ask-button")).to_be_enabled()
    shot(page, "error-not-ready")

    stop(proc)
    box.fill("what is NATO, again")
    box.press("Enter")
    expect(alert).to_contain_text("Could not reach the qa server.")
    expect(page.locator("#ask-button")).to_be_enabled()
    expect(page.get_by_role("status")).to_have_text("")
    shot(page, "error-unreachable")
