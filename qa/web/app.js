// The qa page: ask a question, read the answer and its passages, open a cited span.
//
// Views live in the URL fragment so that every view can be shared and reloaded:
//   #q=<question>&k=<passages>                      the answer to a question
//   #doc=<doc id>&start=<n>&end=<n>&v=<sha256 prefix>  a document with a span highlighted
//
// Everything that comes from the documents (text, titles, paths, headings) is untrusted and
// only ever reaches the page as text: textContent, Text nodes, setAttribute on our own
// attributes. Nothing here parses HTML.
"use strict";

(() => {
  const ASK_TIMEOUT_MS = 60000;
  const DEFAULT_K = 5;
  const K_CHOICES = [3, 5, 10, 20];

  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $("ask"),
    question: $("question"),
    topK: $("top-k"),
    button: $("ask-button"),
    status: $("status"),
    error: $("error"),
    results: $("results"),
    answer: $("answer"),
    passagesBlock: $("passages-block"),
    document: $("document"),
    back: $("back"),
    docTitle: $("doc-title"),
    docMeta: $("doc-meta"),
    docNote: $("doc-note"),
    docText: $("doc-text"),
  };

  let current = null; // {question, k, response} of the last answer shown
  let inflight = null; // AbortController of the ask in progress
  let navigation = 0; // bumps on every view change; late async results check it
  let routed = null; // the fragment last routed, to ignore duplicate events
  let openedFrom = null; // position of the results link that opened the document view

  // ---------------------------------------------------------------- text and offsets

  // The server counts offsets in Unicode code points (Python strings); JavaScript strings
  // index UTF-16 code units. The two differ only after characters outside the BMP.
  function unitOffset(text, codePoints) {
    if (codePoints <= 0) return 0;
    if (!/[\uD800-\uDFFF]/.test(text)) return Math.min(codePoints, text.length);
    let units = 0;
    let count = 0;
    while (units < text.length && count < codePoints) {
      const c = text.charCodeAt(units);
      const pair = c >= 0xd800 && c <= 0xdbff && units + 1 < text.length;
      units += pair ? 2 : 1;
      count += 1;
    }
    return units;
  }

  function codePointLength(text) {
    let n = 0;
    for (const _ of text) n += 1;
    return n;
  }

  // 1-based line of a code-unit offset, as the server's LineIndex counts them.
  function lineAt(text, unit) {
    let line = 1;
    for (let i = text.indexOf("\n"); i !== -1 && i < unit; i = text.indexOf("\n", i + 1)) {
      line += 1;
    }
    return line;
  }

  // A fragment of text with [from, to) (code units) inside a <mark>.
  function marked(text, from, to) {
    const frag = document.createDocumentFragment();
    frag.append(document.createTextNode(text.slice(0, from)));
    const mark = document.createElement("mark");
    mark.textContent = text.slice(from, to);
    frag.append(mark, document.createTextNode(text.slice(to)));
    return frag;
  }

  // The document as numbered lines, with [from, to) (code units) marked; one <mark> per line
  // the span touches, each line keeping its own newline so that textContent is the text.
  function numberedLines(text, from, to) {
    const frag = document.createDocumentFragment();
    let pos = 0;
    for (let n = 1; ; n += 1) {
      const nl = text.indexOf("\n", pos);
      const lineEnd = nl === -1 ? text.length : nl + 1;
      const line = el("span", { class: "line", "data-line": n });
      const a = Math.max(pos, from);
      const b = Math.min(lineEnd, to);
      if (a < b) {
        line.append(text.slice(pos, a), el("mark", {}, text.slice(a, b)), text.slice(b, lineEnd));
      } else {
        line.append(text.slice(pos, lineEnd));
      }
      frag.append(line);
      pos = lineEnd;
      if (nl === -1 || pos >= text.length) break;
    }
    return frag;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "class") node.className = value;
      else node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child); // strings become Text
    }
    return node;
  }

  function lines(c) {
    return c.line_start === c.line_end
      ? `line ${c.line_start}`
      : `lines ${c.line_start}–${c.line_end}`;
  }

  // ---------------------------------------------------------------- the URL fragment

  function params() {
    return new URLSearchParams(location.hash.replace(/^#/, ""));
  }

  function clampK(value) {
    const k = Number.parseInt(value, 10);
    return Number.isInteger(k) && k >= 1 && k <= 50 ? k : DEFAULT_K;
  }

  function askHash(question, k) {
    const p = new URLSearchParams({ q: question });
    if (k !== DEFAULT_K) p.set("k", String(k));
    return `#${p}`;
  }

  function docHash(citation) {
    const p = new URLSearchParams({
      doc: citation.doc_id,
      start: String(citation.start),
      end: String(citation.end),
    });
    if (citation.sha256) p.set("v", citation.sha256.slice(0, 12));
    return `#${p}`;
  }

  function offsetParam(value) {
    return value !== null && /^\d{1,12}$/.test(value) ? Number(value) : null;
  }

  // ---------------------------------------------------------------- talking to the server

  class ShownError extends Error {
    constructor(message, detail) {
      super(message);
      this.detail = detail || "";
    }
  }

  async function api(path, options = {}) {
    let resp;
    try {
      resp = await fetch(path, { ...options, headers: { accept: "application/json", ...options.headers } });
    } catch (err) {
      if (options.signal && options.signal.aborted) throw err;
      throw new ShownError(
        "Could not reach the qa server.",
        "Check that it is running and that this computer can reach it, then try again.",
      );
    }
    let body = null;
    try {
      body = await resp.json();
    } catch {
      body = null;
    }
    if (!resp.ok) {
      const e = body && body.error;
      const where = `HTTP ${resp.status}${e && e.code ? `, ${e.code}` : ""}`;
      if (e && typeof e.message === "string") {
        throw new ShownError(`The server could not answer: ${e.message}`, where);
      }
      throw new ShownError(`The server answered ${resp.status} ${resp.statusText}.`.replace(" .", "."));
    }
    if (body === null) throw new ShownError("The server's answer was not JSON.");
    return body;
  }

  // A document id names a document, never a path to walk: "." and ".." segments (which
  // the URL parser would resolve, even percent-encoded, into another API route) and empty
  // segments are refused before anything is fetched.
  function badDocId(docId) {
    if (!docId) return "The link names no document.";
    if (docId.split("/").some((part) => part === "" || part === "." || part === "..")) {
      return `The link's document id '${docId}' is not a document id (it has an empty, '.' or '..' part).`;
    }
    return null;
  }

  function documentUrl(docId) {
    return `/v1/documents/${docId.split("/").map(encodeURIComponent).join("/")}`;
  }

  function isDocument(doc) {
    return (
      doc !== null &&
      typeof doc === "object" &&
      typeof doc.text === "string" &&
      typeof doc.title === "string" &&
      typeof doc.path === "string" &&
      typeof doc.sha256 === "string"
    );
  }

  // ---------------------------------------------------------------- messages

  // Progress shows on the page; summaries (quiet) are only announced by screen readers.
  function say(text, quiet = false) {
    ui.status.replaceChildren(quiet ? el("span", { class: "visually-hidden" }, text) : text);
  }

  function showError(err) {
    const message = err instanceof ShownError ? err.message : `Something went wrong: ${err}`;
    const detail = err instanceof ShownError ? err.detail : "";
    ui.error.replaceChildren(el("p", { class: "error-message" }, message));
    if (detail) ui.error.append(el("p", { class: "error-detail" }, detail));
    ui.error.hidden = false;
  }

  function clearError() {
    ui.error.hidden = true;
    ui.error.replaceChildren();
  }

  function setBusy(busy) {
    ui.button.disabled = busy;
    ui.button.textContent = busy ? "Searching…" : "Ask";
    ui.results.setAttribute("aria-busy", busy ? "true" : "false");
    ui.form.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function showView(name) {
    ui.document.hidden = name !== "document";
    ui.results.hidden = name !== "results";
  }

  // ---------------------------------------------------------------- asking

  async function ask(question, k) {
    if (inflight) inflight.abort("superseded");
    const ctrl = new AbortController();
    inflight = ctrl;
    const timer = setTimeout(() => ctrl.abort("timeout"), ASK_TIMEOUT_MS);
    const seq = navigation;
    clearError();
    setBusy(true);
    say("Searching…");
    document.title = `${question} — qa`;
    try {
      const body = await api("/v1/ask", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ question, top_k: k }),
        signal: ctrl.signal,
      });
      if (seq !== navigation) return;
      current = { question, k, response: body };
      renderResults(body);
      showView("results");
      say(summary(body), true);
    } catch (err) {
      if (ctrl.signal.aborted && ctrl.signal.reason === "superseded") return;
      say("");
      if (seq === navigation) showView("none"); // no stale answer under the error
      if (ctrl.signal.aborted) {
        showError(
          new ShownError(
            `No answer after ${ASK_TIMEOUT_MS / 1000} seconds.`,
            "The server may be busy or still loading its index; try again in a moment.",
          ),
        );
      } else {
        showError(err);
      }
    } finally {
      clearTimeout(timer);
      if (inflight === ctrl) {
        inflight = null;
        setBusy(false);
      }
    }
  }

  function summary(body) {
    const n = body.passages.length;
    const count = `${n} passage${n === 1 ? "" : "s"}`;
    return body.abstained
      ? `The documents do not cover this question. ${count} shown for reference.`
      : `Answer found, with ${count}.`;
  }

  function renderResults(body) {
    const passages = body.passages;
    if (body.abstained || !body.answer) {
      ui.answer.className = "answer abstained";
      ui.answer.replaceChildren(
        el("h3", {}, "Not in the documents"),
        el("p", { id: "abstain-message" }, body.message || "The documents do not cover this question."),
      );
    } else {
      ui.answer.className = "answer";
      ui.answer.replaceChildren(
        el("h3", {}, "Answer"),
        el("p", { id: "answer-text", class: "answer-text" }, ...answerParts(body.answer, passages)),
      );
    }
    const list = el("ol", { id: "passages", class: "passages" });
    passages.forEach((p) => list.append(renderPassage(p)));
    if (passages.length === 0) {
      ui.passagesBlock.replaceChildren(el("p", {}, "No passages matched."));
    } else if (body.abstained) {
      const details = el(
        "details",
        { class: "closest" },
        el("summary", {}, `Closest passages (${passages.length}), which do not answer it`),
        list,
      );
      ui.passagesBlock.replaceChildren(details);
    } else {
      ui.passagesBlock.replaceChildren(el("h3", { id: "passages-heading" }, "Passages"), list);
      list.setAttribute("aria-labelledby", "passages-heading");
    }
  }

  // "sentence [1]" -> the sentence, with each [n] a link to passage n's place in its document.
  function answerParts(answer, passages) {
    const parts = [];
    const re = /\[(\d+)\]/g;
    let last = 0;
    for (let m = re.exec(answer.text); m; m = re.exec(answer.text)) {
      const n = Number(m[1]);
      const passage = passages[n - 1];
      if (!passage || !answer.citations.includes(n)) continue;
      parts.push(answer.text.slice(last, m.index));
      const c = passage.citation;
      parts.push(
        el(
          "a",
          { class: "cite", href: docHash(c), "aria-label": `Source ${n}: ${c.title}, ${lines(c)}` },
          `[${n}]`,
        ),
      );
      last = m.index + m[0].length;
    }
    parts.push(answer.text.slice(last));
    return parts;
  }

  function renderPassage(p) {
    const c = p.citation;
    const titleId = `passage-${p.rank}-title`;
    const text = p.text;
    const length = codePointLength(text);
    const from = Math.max(0, Math.min(length, p.highlight.start - c.start));
    const to = Math.max(from, Math.min(length, p.highlight.end - c.start));
    const body = el("p", { class: "passage-text" });
    if (to > from) {
      body.append(marked(text, unitOffset(text, from), unitOffset(text, to)));
    } else {
      body.textContent = text;
    }
    const meta = el("p", { class: "meta" }, el("span", { class: "path" }, c.path), ` · ${lines(c)}`);
    if (c.page !== null && c.page !== undefined) meta.append(` · page ${c.page}`);
    if (c.heading) meta.append(" · ", el("span", { class: "heading" }, c.heading));
    meta.append(` · score ${Number(p.score).toFixed(3)}`);
    return el(
      "li",
      { class: "passage" },
      el(
        "article",
        { "aria-labelledby": titleId },
        el("h4", { id: titleId }, el("span", { class: "rank" }, `[${p.rank}] `), c.title),
        meta,
        body,
        el(
          "a",
          { class: "open", href: docHash(c), "data-rank": p.rank },
          "Open in document",
          el("span", { class: "visually-hidden" }, ` ${p.rank}: ${c.title}, ${lines(c)}`),
        ),
      ),
    );
  }

  // ---------------------------------------------------------------- the document view

  async function showDocument(p) {
    const seq = navigation;
    const docId = p.get("doc") || "";
    const start = offsetParam(p.get("start"));
    const end = offsetParam(p.get("end"));
    const version = p.get("v");
    if (inflight) inflight.abort("superseded");
    clearError();
    showView("document");
    ui.back.href = current ? askHash(current.question, current.k) : "#";
    ui.back.textContent = current ? "← Back to results" : "← Ask a question";
    ui.docTitle.textContent = "Opening the document…";
    ui.docMeta.replaceChildren();
    ui.docNote.hidden = true;
    ui.docText.replaceChildren();
    say("Opening the document…");
    try {
      const bad = badDocId(docId);
      if (bad) throw new ShownError(bad, "Open documents from an answer's citations.");
      const doc = await api(documentUrl(docId));
      if (seq !== navigation) return;
      if (!isDocument(doc)) throw new ShownError("The server's answer is not a document.");
      renderDocument(doc, start, end, version);
    } catch (err) {
      if (seq !== navigation) return;
      ui.docTitle.textContent = "The document could not be opened";
      ui.docText.replaceChildren();
      say("");
      showError(err instanceof ShownError ? err : new ShownError("The document could not be shown.", String(err)));
    }
  }

  function renderDocument(doc, start, end, version) {
    const text = doc.text;
    const length = codePointLength(text);
    const notes = [];
    let mark = null;
    ui.docTitle.textContent = doc.title;
    document.title = `${doc.title} — qa`;
    const meta = [el("span", { class: "path" }, doc.path)];
    if (start !== null && end !== null && start < end && end <= length) {
      const from = unitOffset(text, start);
      const to = unitOffset(text, end);
      ui.docText.replaceChildren(numberedLines(text, from, to));
      mark = ui.docText.querySelector("mark");
      mark.id = "cited";
      const span = { line_start: lineAt(text, from), line_end: lineAt(text, Math.max(from, to - 1)) };
      meta.push(` · cited ${lines(span)}`);
      const page = pageAt(doc.page_starts || [], start);
      if (page !== null) meta.push(` · page ${page}`);
      meta.push(` · characters ${start}–${end} of ${length}`);
    } else {
      ui.docText.replaceChildren(numberedLines(text, 0, 0));
      if (start !== null || end !== null) {
        notes.push(
          `The link's span (${start ?? "?"}–${end ?? "?"}) is not inside this document, ` +
            `which has ${length} characters; showing the whole document.`,
        );
      }
    }
    if (version && !doc.sha256.startsWith(version)) {
      notes.push(
        "This document has changed since the link was made; the highlighted span may not " +
          "be the text that was cited.",
      );
    }
    ui.docMeta.replaceChildren(...meta);
    ui.docNote.textContent = notes.join(" ");
    ui.docNote.hidden = notes.length === 0;
    say(mark ? `Opened ${doc.title}, cited span highlighted.` : `Opened ${doc.title}.`, true);
    ui.docTitle.focus({ preventScroll: true });
    if (mark) mark.scrollIntoView({ block: "start" }); // CSS leaves room above for context
    else window.scrollTo(0, 0);
  }

  function pageAt(pageStarts, offset) {
    if (pageStarts.length === 0) return null;
    return pageStarts.filter((s) => s <= offset).length;
  }

  // ---------------------------------------------------------------- routing

  function route() {
    navigation += 1;
    routed = location.hash;
    const p = params();
    if (p.has("doc")) {
      const links = Array.from(ui.results.querySelectorAll("a"));
      const index = links.indexOf(document.activeElement);
      openedFrom = index >= 0 ? index : null;
      showDocument(p);
      return;
    }
    const question = (p.get("q") || "").trim();
    if (!question) {
      if (inflight) inflight.abort("superseded");
      current = null;
      clearError();
      say("");
      showView("none");
      document.title = "qa — ask your documents";
      return;
    }
    const k = clampK(p.get("k"));
    ui.question.value = question;
    setK(k);
    if (current && current.question === question && current.k === k) {
      clearError();
      renderResults(current.response);
      showView("results");
      say(summary(current.response), true);
      document.title = `${question} — qa`;
      returnFocus();
    } else {
      ask(question, k);
    }
  }

  // Back from a document: focus the link that opened it (the results render the same again).
  function returnFocus() {
    if (openedFrom === null) return;
    const target = ui.results.querySelectorAll("a")[openedFrom];
    openedFrom = null;
    if (target) target.focus();
  }

  function setK(k) {
    if (!K_CHOICES.includes(k)) {
      ui.topK.append(el("option", { value: String(k) }, String(k)));
    }
    ui.topK.value = String(k);
  }

  function onNavigate() {
    if (location.hash !== routed) route();
  }

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const question = ui.question.value.trim();
    if (!question) {
      showError(new ShownError("Type a question first."));
      ui.question.focus();
      return;
    }
    const k = clampK(ui.topK.value);
    const hash = askHash(question, k);
    navigation += 1;
    if (hash !== location.hash) history.pushState(null, "", hash);
    routed = location.hash;
    ask(question, k);
  });

  // The skip link moves focus without touching the fragment, which holds the view.
  document.querySelector(".skip").addEventListener("click", (event) => {
    event.preventDefault();
    $("main").focus();
  });

  window.addEventListener("hashchange", onNavigate);
  window.addEventListener("popstate", onNavigate);
  route();
})();
