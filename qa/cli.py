"""The ``qa`` command line: build and inspect the index, ask questions, serve."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from qa.builder import BuildReport, ProgressFactory
from qa.errors import QAError
from qa.settings import Settings
from qa.terminal import json_for_terminal, plain, shown

app = typer.Typer(
    help="Question answering over your documents, with passages and exact citations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
index_app = typer.Typer(help="Build and inspect the index.", no_args_is_help=True)
app.add_typer(index_app, name="index")

console = Console()
err_console = Console(stderr=True)


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


class _SafeRichHandler(RichHandler):
    """Log lines name files and documents: their control characters are shown escaped."""

    def render_message(self, record: logging.LogRecord, message: str) -> Any:
        return super().render_message(record, plain(message))


@app.callback()
def main(
    ctx: typer.Context,
    corpus_dir: Annotated[
        Path | None, typer.Option(help="Documents folder [env QA_CORPUS_DIR]")
    ] = None,
    index_dir: Annotated[Path | None, typer.Option(help="Index folder [env QA_INDEX_DIR]")] = None,
    model: Annotated[
        str | None, typer.Option(help="Embedding model name or path [env QA_EMBEDDING_MODEL]")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[_SafeRichHandler(console=err_console, show_path=False, show_time=False)],
    )
    overrides: dict[str, Any] = {}
    if corpus_dir is not None:
        overrides["corpus_dir"] = corpus_dir
    if index_dir is not None:
        overrides["index_dir"] = index_dir
    if model is not None:
        overrides["embedding_model"] = model
    try:
        ctx.obj = Settings(**overrides)
    except ValidationError as exc:
        err_console.print(Text.assemble(("error:", "red"), " invalid setting: ", shown(str(exc))))
        raise typer.Exit(2) from None


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except QAError as exc:
        err_console.print(Text.assemble(("error:", "red"), " ", shown(exc.message)))
        raise typer.Exit(1) from None


class RateColumn(ProgressColumn):
    """Texts embedded per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} texts/s" if speed else "", style="progress.data.speed")


def _embedding_progress(
    quiet: bool = False, console: Console | None = None
) -> tuple[Progress, ProgressFactory]:
    """A progress bar with counts, rate and time left, and the factory build_index expects
    (on stderr unless ``console`` is given)."""
    progress = Progress(
        TextColumn("[bold]embedding"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or err_console,
        disable=quiet,
    )

    def start_task(total: int) -> Callable[[int], None]:
        task = progress.add_task("embedding", total=total)
        return lambda n: progress.advance(task, n)

    return progress, start_task


def run_build(
    settings: Settings,
    *,
    reuse: bool = True,
    quiet: bool = False,
    skip_if_unchanged: bool = False,
    wait: bool = False,
) -> BuildReport:
    from qa.assemble import embedder_from_settings, spec_from_settings, store_from_settings
    from qa.builder import build_index
    from qa.extraction import CorpusLimits

    progress, start_task = _embedding_progress(quiet)
    with progress:
        return build_index(
            Path(settings.corpus_dir),
            store_from_settings(settings),  # the folder QA_INDEX_DIR, or Milvus
            embedder_from_settings(settings),
            spec_from_settings(settings),
            keep_generations=settings.keep_generations,
            progress=start_task,
            reuse=reuse,
            skip_if_unchanged=skip_if_unchanged,
            wait=wait,
            limits=CorpusLimits.from_settings(settings),
        )


def _print_report(report: BuildReport) -> None:
    if report.up_to_date:
        console.print(
            f"[green]up to date[/green]: generation {report.generation} matches the corpus "
            f"({report.unchanged} documents); nothing embedded"
        )
        return
    console.print(
        f"[green]generation {report.generation}[/green]: {report.documents} documents, "
        f"{report.chunks} chunks, {report.sentences} sentences in {report.seconds:.1f}s "
        f"({report.chunks_per_second:,.0f} chunks/s); embedded {report.embedded}, "
        f"reused {report.reused}"
    )
    console.print(
        f"added {len(report.added)}, changed {len(report.changed)}, "
        f"removed {len(report.removed)}, renamed {len(report.renamed)}, "
        f"unchanged {report.unchanged}"
    )
    for old, new in report.renamed:
        console.print(Text.assemble("renamed ", shown(old), " → ", shown(new)))
    for skipped in report.skipped:
        console.print(
            Text.assemble(
                ("skipped", "yellow"), " ", shown(skipped["path"]), ": ", shown(skipped["reason"])
            )
        )


@index_app.command("build")
def index_build(
    ctx: typer.Context,
    full: Annotated[
        bool, typer.Option("--full", help="Embed everything again instead of reusing vectors")
    ] = False,
) -> None:
    """Index the corpus into a new generation and put it in service."""
    with _errors():
        _print_report(run_build(_settings(ctx), reuse=not full))


@index_app.command("update")
def index_update(
    ctx: typer.Context,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for a running build instead of failing")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Bring the index in step with the corpus, embedding only what is new or changed."""
    from qa.updater import report_dict

    with _errors():
        report = run_build(_settings(ctx), skip_if_unchanged=True, wait=wait, quiet=as_json)
    if as_json:
        print(json.dumps(report_dict(report)))
    else:
        _print_report(report)


@index_app.command("rollback")
def index_rollback(ctx: typer.Context) -> None:
    """Put the previous index generation back in service."""
    from qa.assemble import spec_from_settings, store_from_settings
    from qa.index import rollback

    settings = _settings(ctx)
    with _errors():
        if settings.vector_store == "milvus":
            store = store_from_settings(settings)
            store.rollback(spec_from_settings(settings))
            name = f"generation {store.current_key()} of {store}"
        else:
            name = rollback(Path(settings.index_dir), spec_from_settings(settings)).name
    console.print(f"[green]rolled back[/green]: {name} is in service")


@index_app.command("watch")
def index_watch(ctx: typer.Context) -> None:
    """Watch the corpus folder and update the index whenever edits settle (Ctrl-C stops)."""
    import threading

    from qa.updater import watch_changes

    settings = _settings(ctx)
    with _errors():
        _print_report(run_build(settings, skip_if_unchanged=True, wait=True))
    console.print(Text.assemble("watching ", shown(str(settings.corpus_dir)), " (Ctrl-C to stop)"))
    stop = threading.Event()
    try:
        for n in watch_changes(Path(settings.corpus_dir), settings.watch_debounce_ms, stop):
            console.print(f"{n} change(s)")
            with _errors():
                _print_report(run_build(settings, skip_if_unchanged=True, wait=True))
    except KeyboardInterrupt:
        stop.set()


@index_app.command("status")
def index_status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show the generation in service and whether it matches the corpus."""
    from qa.assemble import spec_from_settings, store_from_settings
    from qa.builder import index_state
    from qa.extraction import CorpusLimits

    settings = _settings(ctx)
    with _errors():
        store = store_from_settings(settings)
        state, why, manifest = index_state(
            Path(settings.corpus_dir),
            store,
            spec_from_settings(settings),
            CorpusLimits.from_settings(settings),
        )
    info: dict[str, Any] = {
        "state": state,
        "detail": why,
        "index_dir": str(settings.index_dir),
        "store": str(store),
    }
    if manifest:
        info.update(
            generation=manifest["generation"],
            built_at=manifest["built_at"],
            model=manifest["model"],
            chunker=manifest["chunker"],
            counts=manifest["counts"],
            skipped=manifest["skipped"],
        )
    if as_json:
        print(json.dumps(info, indent=2))
        return
    color = "green" if state == "fresh" else "yellow"
    console.print(Text.assemble((state, color), ": ", shown(why)))
    if manifest:
        table = Table(show_header=False, box=None)
        table.add_row("generation", str(manifest["generation"]))
        table.add_row("built at", manifest["built_at"])
        table.add_row("model", f"{manifest['model']['id']} ({manifest['model']['dimension']}d)")
        table.add_row("chunker", json.dumps(manifest["chunker"]))
        for key, value in manifest["counts"].items():
            table.add_row(key, str(value))
        console.print(table)
    if state != "fresh":
        raise typer.Exit(1)


@app.command()
def ask(
    ctx: typer.Context,
    question: Annotated[str, typer.Argument(help="The question")],
    top_k: Annotated[
        int | None, typer.Option("--top-k", "-k", min=1, max=50, help="[default: QA_TOP_K]")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON")] = False,
    doc_id: Annotated[list[str] | None, typer.Option(help="Only this document (repeat)")] = None,
    path_prefix: Annotated[str | None, typer.Option(help="Only paths starting so")] = None,
) -> None:
    """Answer a question from the index, with cited passages."""
    from qa.engine import Engine, filters_from

    with _errors():
        engine = Engine(_settings(ctx))
        engine.load()
        result = engine.ask(question, top_k, filters_from(doc_id, path_prefix))
    if as_json:
        print(json_for_terminal(result.model_dump_json(indent=2)))
        return
    # Document text is untrusted: it reaches the terminal only through shown() (controls
    # escaped, never parsed as markup); see qa/terminal.py.
    if result.answer is None:
        console.print(shown(result.message or "", "yellow"))
    else:
        console.print(Text.assemble(("Answer:", "bold"), " ", shown(result.answer.text), "\n"))
    for p in result.passages:
        c = p.citation
        where = f"{c.path}:{c.line_start}-{c.line_end}"
        if c.page:
            where += f" (page {c.page})"
        console.print(
            Text.assemble(
                (f"[{p.rank}]", "bold cyan"),
                " ",
                shown(c.title),
                " — ",
                shown(where),
                f" chars {c.start}-{c.end}  score {p.score:.3f}",
            )
        )
        rel_s, rel_e = p.highlight.start - c.start, p.highlight.end - c.start
        console.print(
            Text.assemble(
                shown(p.text[:rel_s]),
                shown(p.text[rel_s:rel_e], "reverse"),
                shown(p.text[rel_e:]),
            )
        )
        console.print()


@app.command("eval")
def eval_(
    ctx: typer.Context,
    dataset: Annotated[
        Path, typer.Argument(help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/")
    ],
    mode: Annotated[str, typer.Option(help="dense, bm25 or hybrid")] = "hybrid",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Measure retrieval on a BEIR data set: nDCG@10, Recall@100, MRR@10, latency."""
    from qa.assemble import embedder_from_settings, spec_from_settings
    from qa.evaluation import evaluate, load_dataset

    if mode not in ("dense", "bm25", "hybrid"):
        err_console.print(f"[red]error:[/red] --mode must be dense, bm25 or hybrid, got {mode!r}")
        raise typer.Exit(2)
    settings = _settings(ctx)
    with _errors():
        data = load_dataset(dataset)
        embedder = embedder_from_settings(settings)
        progress, start_task = _embedding_progress(quiet=as_json)
        with progress:
            result = evaluate(
                data,
                Path(settings.cache_dir),
                embedder,
                spec_from_settings(settings),
                mode=mode,
                candidates=settings.candidates,
                progress=start_task,
                store=settings.vector_store,
            )
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"{dataset} ({result['docs']} docs, {result['queries']} queries)")
    for col in ("mode", "nDCG@10", "Recall@100", "MRR@10", "p50 ms", "p95 ms"):
        table.add_column(col)
    table.add_row(
        mode,
        f"{result['ndcg@10']:.3f}",
        f"{result['recall@100']:.3f}",
        f"{result['mrr@10']:.3f}",
        f"{result['latency_ms']['p50']:.1f}",
        f"{result['latency_ms']['p95']:.1f}",
    )
    console.print(table)


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address [env QA_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [env QA_PORT]")] = None,
    build: Annotated[
        bool, typer.Option(help="Build the index first when it is missing or stale")
    ] = True,
    watch: Annotated[
        bool, typer.Option("--watch", help="Update the index when the corpus changes")
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="Server processes on the one port [env QA_WORKERS]"),
    ] = None,
) -> None:
    """Serve the HTTP API (and build the index first when it is missing or stale).

    With --workers N, N processes share the port; the index is built once, before they start."""
    from qa.assemble import spec_from_settings
    from qa.builder import index_freshness
    from qa.extraction import CorpusLimits
    from qa.http.observe import configure_logging
    from qa.http.server import run_server

    settings = _settings(ctx)
    with _errors():
        uri = settings.milvus_uri_resolved
        if (
            (workers or settings.workers) > 1
            and settings.vector_store == "milvus"
            and (uri.endswith(".db"))
        ):
            from qa.errors import InvalidRequest

            raise InvalidRequest(
                f"an embedded Milvus Lite database ({uri}) admits one process, not "
                f"{workers or settings.workers} workers: run `milvus-lite server --data-dir D "
                "--port P` and set QA_MILVUS_URI=http://127.0.0.1:P, or serve with one worker"
            )
        if build and settings.vector_store == "milvus":
            # the store says what it holds; nothing is written when the corpus matches it
            _print_report(run_build(settings, skip_if_unchanged=True, wait=True))
        elif build:
            state, why = index_freshness(
                Path(settings.corpus_dir),
                Path(settings.index_dir),
                spec_from_settings(settings),
                CorpusLimits.from_settings(settings),
            )
            if state != "fresh":
                err_console.print(Text.assemble(f"index {state}: ", shown(why), "; building"))
                _print_report(run_build(settings, reuse=state == "stale", wait=True))
    # the app knows where it listens: the allowed Host names default from the bind address
    settings = settings.model_copy(
        update={
            "host": host or settings.host,
            "port": port or settings.port,
            "workers": workers or settings.workers,
        }
    )
    processes = f", {settings.workers} workers" if settings.workers > 1 else ""
    err_console.print(
        f"serving on http://{settings.host}:{settings.port}{processes} (OpenAPI at /docs)"
    )
    configure_logging(settings.log_format)
    run_server(settings, watch=watch, workers=settings.workers)


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send file descriptor 1 and sys.stdout to stderr (native libraries print to fd 1)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@app.command("mcp")
def mcp_stdio(ctx: typer.Context) -> None:
    """Serve the index to an MCP client over stdio (tools: search, get_document)."""
    from qa.engine import Engine
    from qa.mcp_server import build_mcp_server

    settings = _settings(ctx)
    # stdout carries the protocol: anything printed while loading goes to stderr instead.
    with _errors(), _stdout_to_stderr():
        engine = Engine(settings)
        engine.load()
        engine.warm_up()
    build_mcp_server(engine).run("stdio")


def entrypoint() -> None:  # pragma: no cover
    sys.exit(app())
