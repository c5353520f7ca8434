r"""The mmevol command line: each command parses options, calls the library once, and prints.

Example:
    mmevol serve-sim --port 8765 &
    OPENAI_API_KEY=sim mmevol run seed.jsonl --images images/ --run trial \\
        --base-url http://127.0.0.1:8765/v1
    mmevol status --run trial
    mmevol export --run trial -o evolved.json
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import inspect
import json
import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, get_type_hints

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mmevol.graph.config import (
    BATCH_MAX_BYTES,
    BATCH_MAX_REQUESTS,
    Settings,
    default_checkpoints_dir,
)

app = typer.Typer(
    help="Evolve image-grounded Q&A data with the MMEvol method.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals would print API keys
)
out = Console()
err = Console(stderr=True)

RunOpt = Annotated[
    str,
    typer.Option(
        "--run",
        help="Run name: a folder under --checkpoints (letters, digits, '.', '_', '-').",
    ),
]
CheckpointsOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoints",
        envvar="MMEVOL_CHECKPOINTS",
        help=escape("Folder of runs.  [default: checkpoints]"),
        show_default=False,
    ),
]


EXIT_ERROR = 1
"""A bad option, bad input, an unreachable endpoint, a damaged run folder, a full disk."""
EXIT_BUSY = 5
"""Another process is writing the run folder."""


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print one error line and exit (1 unless told)."""
    err.print(f"Error: {message}", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(code=code)


def _expected_errors() -> tuple[type[BaseException], ...]:
    from mmevol.run.runfolder import RunBusy
    from mmevol.runtime.llm import EndpointProblem

    return (EndpointProblem, RunBusy, OSError, sqlite3.OperationalError, ValueError)


# sqlite's words for a write the disk or the folder refused (anything else is a bug).
_SQLITE_WRITE_ERRORS = {
    "database or disk is full": "the disk is full (database or disk is full)",
    "disk I/O error": "writing the run's databases failed (disk I/O error: is the disk full?)",
    "attempt to write a readonly database": "the run's databases are read-only",
    "unable to open database file": "cannot open the run's databases",
}


def _one_line(problem: BaseException) -> tuple[str, int] | None:
    """Return the line and exit status of an expected error, or None for a bug."""
    from mmevol.run.runfolder import RunBusy

    if isinstance(problem, RunBusy):
        return str(problem), EXIT_BUSY
    if isinstance(problem, sqlite3.OperationalError):
        what = _SQLITE_WRITE_ERRORS.get(str(problem))
        if what is None:
            return None
        return (
            f"{what}: free some space or choose a writable --checkpoints, then "
            "run the same command again; everything recorded so far is kept",
            EXIT_ERROR,
        )
    if isinstance(problem, OSError) and problem.errno is not None:
        return _os_problem(problem), EXIT_ERROR
    return str(problem), EXIT_ERROR


def _os_problem(problem: OSError) -> str:
    name = problem.filename if problem.filename is not None else "a file"
    where = f"{name} ({problem.strerror})"
    if problem.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"no space left writing {where}: free some space and run the command again"
    if problem.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (
            f"cannot write {where}: choose a writable folder (--checkpoints, -o) or fix "
            "its permissions"
        )
    if problem.errno == errno.EISDIR:
        return f"{where}: give the path of a file, not a folder"
    if problem.errno == errno.ENOTDIR:
        return f"{where}: a part of this path is a file, not a folder"
    return f"{where}"


def guarded(call, *args, **kwargs):
    """Run a call, turning expected errors into one line (unless MMEVOL_RAISE_ERRORS is set)."""
    try:
        return call(*args, **kwargs)
    except _expected_errors() as problem:
        answer = _one_line(problem)
        if answer is None or os.environ.get("MMEVOL_RAISE_ERRORS"):
            raise
        fail(*answer)


def _existing_run(run: str, checkpoints: Path | None) -> Path:
    from mmevol.inspection.runs import existing_run

    return guarded(existing_run, run, checkpoints or default_checkpoints_dir())


# Parameter names of the options built from Settings: apart from the command's own.
_PREFIX = "settings__"


def settings_options(*only: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per field of ``Settings`` (or of the fields named in ``only``).

    The command declares its own arguments and options plus a ``settings: Settings``
    parameter; it receives the settings built from the options (an unset option leaves the
    field to ``Settings``: its environment variable, then its default). Names, types,
    defaults and help texts all come from ``graph/config.py``.
    """
    hints = get_type_hints(Settings)
    chosen = [
        f
        for f in dataclasses.fields(Settings)
        if f.metadata.get("cli", True) and (not only or f.name in only)
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own_hints = get_type_hints(command, include_extras=True)
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=own_hints[p.name])
            for p in inspect.signature(command).parameters.values()
            if p.name != "settings"
        ]
        # The command's arguments, then the settings, then the command's own options.
        params = [p for p in own if p.default is inspect.Parameter.empty]
        for f in chosen:
            params.append(
                inspect.Parameter(
                    _PREFIX + f.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    annotation=Annotated[_cli_type(f, hints[f.name]) | None, _option(f)],
                    default=None if f.default is dataclasses.MISSING else f.default,
                )
            )

        @functools.wraps(command)
        def with_settings(**kwargs: Any) -> Any:
            given = {
                name.removeprefix(_PREFIX): kwargs.pop(name)
                for name in list(kwargs)
                if name.startswith(_PREFIX)
            }
            settings = guarded(Settings, **{k: v for k, v in given.items() if v is not None})
            return command(**kwargs, settings=settings)

        params += [p for p in own if p.default is not inspect.Parameter.empty]
        with_settings.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        with_settings.__annotations__ = {p.name: p.annotation for p in params}
        return with_settings

    return decorate


def _cli_type(f: dataclasses.Field, hint: Any) -> Any:
    """Return the option's type: a list of strings for an option given more than once."""
    return list[str] if f.metadata.get("many") else hint


def _option(f: dataclasses.Field) -> Any:
    flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
    if f.type == "bool" and "/" not in flag:
        flag = f"{flag}/--no-{flag.removeprefix('--')}"
    help_text = f.metadata.get("help", "")
    if f.metadata.get("env"):
        help_text += f"  [env var: {f.metadata['env']}]"
    help_text = escape(help_text)  # "[default: ...]" is text, not rich markup
    # A computed default (checkpoints) is described in the help text instead.
    return typer.Option(flag, help=help_text, show_default=f.default is not dataclasses.MISSING)


def _print_version(given: bool) -> None:
    if given:
        from importlib.metadata import version

        out.print(f"mmevol {version('mmevol')}", highlight=False)
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version."
        ),
    ] = False,
) -> None:
    """Evolve image-grounded Q&A data with the MMEvol method."""


@app.command()
@settings_options()
def run(
    seed: Annotated[
        Path, typer.Argument(help="Seed: a JSON list, a JSONL file or a folder of JSON files.")
    ],
    settings: Settings,
    retry_failed: Annotated[bool, typer.Option(help="Run failed samples again.")] = False,
) -> None:
    """Evolve a seed (re-running the same command resumes it).

    Exit status:

      0    the seed is through and every sample is done
      1    an error, in one line: a bad option or run name, a missing seed or key, an
           image root that lacks the seed's images, an unusable endpoint, a damaged run
           folder, a resume with settings that change results or another seed, a full
           disk or an unwritable folder
      2    a usage error (an unknown option or a missing argument)
      3    stopped by --max-cost, --max-calls or a failing endpoint, or samples were
           interrupted by endpoint errors or still wait for batch answers (resumable:
           the same command resumes them)
      4    the seed is through, but some samples failed (this time, or earlier and
           not retried: --retry-failed runs them again)
      5    another process is writing this run (its lock names it)
      130  stopped by Ctrl-C or SIGTERM (resumable)

    Every option but --retry-failed is a field of graph/config.py:Settings.
    """
    import time

    from mmevol.inspection.status import failed_earlier
    from mmevol.run import runner
    from mmevol.run.outcome import run_outcome
    from mmevol.run.progress import RunProgress

    started = time.time()
    with RunProgress(err) as progress:
        report = guarded(runner.run, settings, seed, retry_failed=retry_failed, listener=progress)
    earlier = 0 if retry_failed else failed_earlier(settings.results_db, started, settings.limit)
    ending = run_outcome(report, settings.run, settings.run_dir, earlier)
    out.print(ending.summary, highlight=False)
    for line in ending.failures:
        err.print(line, highlight=False, markup=False)
    for paragraph in ending.advice:
        err.print(paragraph, highlight=False, markup=False, soft_wrap=True)
    if ending.exit_code:
        raise typer.Exit(code=ending.exit_code)


@app.command()
def status(
    run: RunOpt = "default",
    checkpoints: CheckpointsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show samples per status, rounds, drops and model calls of a run.

    Samples "running" in a run no process holds any more (killed, terminal closed) are
    shown as interrupted: running the run again resumes them. Per round, candidates are
    the items that passed parsing and the checks and went to the judge: candidates =
    kept + judged out. Items dropped before judging are counted apart (dropped_parse,
    dropped_check, over every attempt); the dropped table lists every drop by stage.
    A run with several endpoints also shows calls, errors and answers per endpoint.
    """
    from mmevol.inspection.status import run_summary, status_view

    summary = guarded(run_summary, _existing_run(run, checkpoints))
    if as_json:
        out.print_json(json.dumps(summary))
        return
    headline, tables = status_view(summary, run)
    out.print(headline, highlight=False)
    for title, rows in tables:
        out.print(_table(title, rows))


def _table(title: str, rows: list[dict]) -> Table:
    table = Table(title=title, title_justify="left")
    for key in rows[0]:
        table.add_column(key, overflow="fold")
    for row in rows:
        table.add_row(*(Text("" if v is None else str(v)) for v in row.values()))  # no markup
    return table


@app.command()
def runs(
    checkpoints: CheckpointsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the runs under --checkpoints: samples done, failed, interrupted, and if live."""
    from mmevol.inspection.runs import list_runs

    folder = checkpoints or default_checkpoints_dir()
    rows = [r.as_dict() for r in guarded(list_runs, folder)]
    if as_json:
        out.print_json(json.dumps(rows))
    elif not rows:
        out.print(f"no runs under {folder}", highlight=False, markup=False, soft_wrap=True)
    else:
        out.print(_table(f"runs under {folder.resolve()}", rows))


@app.command()
def export(
    output: Annotated[
        Path,
        typer.Option(
            "-o", "--output", help="File to write (.json or .jsonl); a folder for --format hf."
        ),
    ],
    run: RunOpt = "default",
    checkpoints: CheckpointsOpt = None,
    fmt: Annotated[
        str,
        typer.Option("--format", help="authors, llava, llava-next, sharegpt or hf."),
    ] = "authors",
    rounds: Annotated[
        str | None,
        typer.Option(help="Versions that become records: 1,2,3 by default; 0 adds the seed."),
    ] = None,
    min_score: Annotated[
        int | None, typer.Option("--min-score", help="Keep evolved items scored at least N.")
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(help="Solving steps: inline (before the answer, default), none, field."),
    ] = None,
    images: Annotated[
        Path | None, typer.Option(help=escape("Image root.  [default: the run's --images]"))
    ] = None,
    image_max_side: Annotated[
        int | None, typer.Option(help="hf: downscale embedded images to N px a side.")
    ] = None,
    push_to_hub: Annotated[
        str | None, typer.Option(help="hf: push the folder to this Hub dataset repo.")
    ] = None,
    relative_to: Annotated[
        Path | None,
        typer.Option(help="llava, llava-next, sharegpt: image paths relative to this folder."),
    ] = None,
    boxes: Annotated[
        str | None, typer.Option(help="Boxes in the text: unit (0-1, default), 1000, pixels.")
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Hold out a split by hash_id, e.g. val=0.02.")
    ] = None,
    license: Annotated[
        str | None, typer.Option("--license", help="hf: the card's license (e.g. cc-by-4.0).")
    ] = None,
    image_column: Annotated[
        bool | None,
        typer.Option(
            "--image-column/--no-image-column",
            help="hf: keep the one-image `image` column beside `images` (default: keep).",
        ),
    ] = None,
    require_image: Annotated[
        bool, typer.Option(help="Leave out items the blind gate answered without the image.")
    ] = False,
    min_agreement: Annotated[
        float | None, typer.Option(help="Leave out items the second judge agreed with less (0-1).")
    ] = None,
    dedup: Annotated[
        bool, typer.Option(help="Leave out near-duplicate images and questions (first kept).")
    ] = False,
    decontaminate: Annotated[
        list[Path] | None, typer.Option(help="JSON/JSONL of benchmark questions to leave out.")
    ] = None,
    decontaminate_images: Annotated[
        Path | None, typer.Option(help="Folder of benchmark images to leave out.")
    ] = None,
    image_distance: Annotated[
        int, typer.Option(help="Perceptual-hash bits under which images are the same.")
    ] = 4,
    question_similarity: Annotated[
        float, typer.Option(help="--dedup: Jaccard similarity of near-duplicate questions.")
    ] = 0.8,
    contamination_similarity: Annotated[
        float, typer.Option(help="--decontaminate: Jaccard similarity to a benchmark question.")
    ] = 0.7,
) -> None:
    """Write finished samples: the authors' format, or training records (llava, sharegpt, hf)."""
    from mmevol.outputs import formats, training
    from mmevol.outputs.filters import FilterOptions

    path = _existing_run(run, checkpoints)
    filters = guarded(
        FilterOptions,
        require_image=require_image,
        min_agreement=min_agreement,
        dedup=dedup,
        decontaminate=tuple(decontaminate or ()),
        decontaminate_images=decontaminate_images,
        image_distance=image_distance,
        question_similarity=question_similarity,
        contamination_similarity=contamination_similarity,
    )
    if fmt == "authors":
        given = [rounds, min_score, steps, image_max_side, push_to_hub, relative_to,
                 boxes, split, license, image_column]  # fmt: skip
        if any(v is not None for v in given):
            fail("--rounds, --min-score, --steps, --image-max-side, --push-to-hub,"
                 " --relative-to, --boxes, --split, --license and --image-column"
                 " apply to --format llava, llava-next, sharegpt or hf")  # fmt: skip
        from mmevol.outputs.authors import export_json

        result = guarded(export_json, path, output, filters, images)
        out.print(result.summary(output), highlight=False, markup=False, soft_wrap=True)
        for line in result.problems:
            err.print(f"skipped: {line}", highlight=False, markup=False, soft_wrap=True)
        return
    options = guarded(
        formats.ExportOptions.from_given,
        rounds=rounds,
        min_score=min_score,
        steps=steps,
        images=images,
        image_max_side=image_max_side,
        push_to_hub=push_to_hub,
        relative_to=relative_to,
        boxes=boxes or formats.DEFAULT_BOXES,
        split=guarded(formats.parse_split, split) if split else None,
        license=license,
        image_column=image_column is not False,
        filters=filters,
    )
    try:
        report = guarded(training.export_training, path, output, fmt, options)
    except formats.MissingExtra as problem:
        fail(str(problem))
    out.print(report.summary(), highlight=False, soft_wrap=True)
    for line in report.skipped_lines():
        err.print(line, highlight=False, markup=False, soft_wrap=True)
    for line in report.written_lines():
        out.print(line, highlight=False, markup=False, soft_wrap=True)


MarkScoreOpt = Annotated[
    int | None,
    typer.Option("--min-score", help="Mark this export --min-score cut-off on the score chart."),
]


@app.command()
def stats(
    run: RunOpt = "default",
    checkpoints: CheckpointsOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the statistics as JSON (keys: README).")
    ] = False,
    plots: Annotated[
        Path | None,
        typer.Option(
            "--plots", help=escape("Folder to write PNG charts into (needs mmevol[plots]).")
        ),
    ] = None,
    min_score: MarkScoreOpt = None,
) -> None:
    """Compare a run with the paper: per round, per item version, per operator, cost."""
    from mmevol.outputs.stats import compute_stats, tables

    path = _existing_run(run, checkpoints)
    result = guarded(compute_stats, path, run)
    if plots is not None:
        from mmevol.outputs.plots import write_plots

        written = guarded(write_plots, result, plots, min_score)
        err.print(f"wrote {len(written)} charts to {plots}", highlight=False)
    if as_json:
        out.print_json(json.dumps(result))
        return
    for title, header, rows in tables(result):
        table = Table(title=title, title_justify="left")
        for name in header:
            table.add_column(name, overflow="fold")
        for row in rows:
            table.add_row(*row)
        out.print(table)


@app.command()
def report(
    output: Annotated[Path, typer.Option("-o", "--output", help="HTML file to write.")],
    run: RunOpt = "default",
    checkpoints: CheckpointsOpt = None,
    samples: Annotated[int, typer.Option("--samples", min=0, help="Samples in the gallery.")] = 300,
    min_score: MarkScoreOpt = None,
    images: Annotated[
        Path | None, typer.Option(help=escape("Image root.  [default: the run's --images]"))
    ] = None,
) -> None:
    """Write one self-contained HTML report: statistics, charts and a gallery of samples."""
    from mmevol.outputs.report import write_report

    path = _existing_run(run, checkpoints)
    info = guarded(write_report, path, output, samples, min_score=min_score, images=images)
    out.print(info.summary(), highlight=False, markup=False, soft_wrap=True)
    if info.problem:
        fail(info.problem)


@app.command()
def trace(
    hash_id: Annotated[str, typer.Argument(help="The sample's hash_id.")],
    run: RunOpt = "default",
    checkpoints: CheckpointsOpt = None,
    branch: Annotated[str, typer.Option(help="Branch to show (main or a replay fork).")] = "main",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    raw: Annotated[
        bool,
        typer.Option(
            help="Add the model's answers and the prompts (compacted samples: answers only)."
        ),
    ] = False,
) -> None:
    """Show one sample's path through the graph, step by step, from its checkpoints."""
    from mmevol.inspection.trace import UnknownSample, format_steps, trace_in_run

    results = _existing_run(run, checkpoints)
    try:
        steps = guarded(trace_in_run, results, hash_id, branch, raw)
    except UnknownSample as problem:
        fail(str(problem))
    if as_json:
        out.print_json(json.dumps(steps))
    else:
        out.print(format_steps(steps), highlight=False, markup=False, soft_wrap=True)


@app.command()
def replay(
    hash_id: Annotated[str, typer.Argument(help="The sample's hash_id.")],
    from_step: Annotated[
        int | None, typer.Option("--from", help="Trace step to run again (mmevol trace).")
    ] = None,
    run: RunOpt = "default",
    checkpoints: CheckpointsOpt = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="FIELD=VALUE to change in the state first.")
    ] = None,
    operator: Annotated[
        str | None, typer.Option(help="Operator to use instead of the draw.")
    ] = None,
    branch: Annotated[str, typer.Option(help="Branch to fork from.")] = "main",
    adopt: Annotated[
        str | None,
        typer.Option(help="Make the export use this finished branch (a fork, or main again)."),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(envvar="OPENAI_BASE_URL", help=escape("Endpoint [default: the run's].")),
    ] = None,
) -> None:
    """Fork a sample from a past step and run the rest, or adopt a fork made earlier.

    --from STEP forks the sample before that trace step, runs the rest with real calls and
    shows what changed; --adopt BRANCH makes the export use a finished fork (or main again).
    A replay that fails leaves no fork behind (its model calls stay on record).
    """
    from mmevol.inspection.replay import adopt as adopt_branch
    from mmevol.inspection.replay import replay_in_run
    from mmevol.inspection.trace import UnknownSample

    results = _existing_run(run, checkpoints)
    if (from_step is None) == (adopt is None):
        fail("give --from STEP to fork, or --adopt BRANCH to export a fork made earlier")
    if adopt is not None:
        guarded(adopt_branch, results, hash_id, adopt)
        out.print(f"the export now uses {adopt} for this sample", highlight=False)
        return
    try:  # ReplayProblem is a ValueError: one line
        result = guarded(
            replay_in_run, results, hash_id, from_step, set_, operator, branch, base_url
        )
    except UnknownSample as problem:
        fail(str(problem))
    out.print(result.headline(hash_id), highlight=False)
    for line in result.details(hash_id, run):
        out.print(line, highlight=False, markup=False, soft_wrap=True)


@app.command()
def merge(
    shard_dirs: Annotated[
        list[Path], typer.Argument(help="Run folders of shards (mmevol run --shard I/N).")
    ],
    run: RunOpt = "default",
    checkpoints: CheckpointsOpt = None,
) -> None:
    """Build (or bring up to date) one run from shard run folders of one seed.

    Merging again adds the shards finished since and updates the samples that progressed.
    Refused, writing nothing: folders holding one sample twice, shards of different seeds
    or result-changing settings, a folder that is not a run.

    Exit status: 0 merged (missing shards are named), 1 refused or an error,
    2 a usage error, 5 a live process writes a shard folder or the target run.
    """
    from mmevol.run.merge import merge as merge_runs

    checkpoints = checkpoints or default_checkpoints_dir()
    report = guarded(
        merge_runs,
        run,
        checkpoints,
        shard_dirs,
        on_notice=lambda text: err.print(f"note: {text}", highlight=False, markup=False),
    )
    for line in report.lines(run):
        out.print(line, highlight=False, markup=False, soft_wrap=True)


@app.command("estimate")
@settings_options(
    "rounds", "limit", "shard", "model", "scorer_model", "chunk_size", "image_detail", "prices",
    "gates", "blind_model", "judge2_model",
)  # fmt: skip
def estimate_cmd(
    seed: Annotated[Path, typer.Argument(help="Seed: a JSON list, a JSONL file or a folder.")],
    settings: Settings,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Estimate calls, tokens and cost of a seed, online and in batch mode, calling no model.

    Batch mode (the Batch API) costs the price table's batch factor of the online price
    (half on OpenAI) and answers within 24 hours.
    """
    from mmevol.inspection.estimate import estimate

    result = guarded(estimate, settings, seed)
    data = result.as_dict()
    if as_json:
        out.print_json(json.dumps(data))
        return
    out.print(result.summary(settings.model, settings.judge_model), highlight=False)
    rounds = [{k: v for k, v in r.items() if k != "gates"} for r in data["rounds"]]
    out.print(_table("per round", rounds))
    out.print(_table("per model", [*data["models"], result.total_row()]))
    if result.gates:
        out.print(_table("gate calls (included above)", result.gate_rows()))
    for note in result.notes():
        err.print(note)


@app.command("graph")
def show_graph() -> None:
    """Print the per-sample graph as a Mermaid diagram."""
    from mmevol.graph.build import build_graph

    out.print(build_graph().compile().get_graph().draw_mermaid(), highlight=False, markup=False)


@app.command("serve-sim")
def serve_sim(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).")] = 8765,
    latency_ms: Annotated[float, typer.Option(help="Median latency of each answer.")] = 0.0,
    heavy_tail: Annotated[
        bool, typer.Option(help="Heavy-tailed latency around the median.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the simulated answers.")] = 0,
    error_rate: Annotated[float, typer.Option(help="Share of HTTP 500 answers.")] = 0.0,
    rate_limit_rate: Annotated[float, typer.Option(help="Share of HTTP 429 answers.")] = 0.0,
    garbage_rate: Annotated[float, typer.Option(help="Share of unusable answers.")] = 0.0,
    truncate_rate: Annotated[
        float, typer.Option(help="Share of answers cut at the token limit.")
    ] = 0.0,
    surrogate_rate: Annotated[
        float, typer.Option(help="Share of answers holding a lone surrogate (not text).")
    ] = 0.0,
    api_key: Annotated[str | None, typer.Option(help="Require this bearer key.")] = None,
    cached_share: Annotated[
        float, typer.Option(help="Share of prompt tokens reported as cached (prompt caching).")
    ] = 0.0,
    batch_turnaround: Annotated[
        float, typer.Option(help="Seconds a batch takes; its lines are answered over them.")
    ] = 0.0,
    batch_failed_lines: Annotated[
        float, typer.Option(help="Share of batch lines that fail with a 500.")
    ] = 0.0,
    batch_expire_after: Annotated[
        float | None, typer.Option(help="Seconds after which a batch not done expires.")
    ] = None,
    batch_max_requests: Annotated[
        int, typer.Option(help="Lines a batch may hold.")
    ] = BATCH_MAX_REQUESTS,
    batch_max_bytes: Annotated[
        int, typer.Option(help="Bytes a batch input file may hold (200 MB).")
    ] = BATCH_MAX_BYTES,
) -> None:
    """Serve the simulated OpenAI-compatible endpoint on loopback (Ctrl-C stops it)."""
    from mmevol.sim.server import SimOptions, serve_forever

    options = guarded(
        SimOptions,
        seed=seed,
        latency_ms=latency_ms,
        latency_dist="heavy" if heavy_tail else "fixed",
        error_rate=error_rate,
        rate_limit_rate=rate_limit_rate,
        garbage_rate=garbage_rate,
        truncate_rate=truncate_rate,
        surrogate_rate=surrogate_rate,
        api_key=api_key,
        cached_share=cached_share,
        batch_turnaround=batch_turnaround,
        batch_failed_lines=batch_failed_lines,
        batch_expire_after=batch_expire_after,
        batch_max_requests=batch_max_requests,
        batch_max_bytes=batch_max_bytes,
    )
    guarded(serve_forever, options, "127.0.0.1", port)


@app.command()
def demo(
    samples: Annotated[int, typer.Option(help="Synthetic samples to draw.")] = 12,
    checkpoints: CheckpointsOpt = None,
    gates: Annotated[
        str | None, typer.Option(help="Quality gates to run (blind, judge2) and show.")
    ] = None,
) -> None:
    """Draw a synthetic seed, serve the simulated endpoint, and evolve the seed end to end."""
    from mmevol.sim.demo import run_demo

    result = guarded(run_demo, checkpoints or default_checkpoints_dir(), samples, gates=gates)
    out.print(result.summary, highlight=False)


def main() -> None:
    """Run the CLI (the console script's entry point)."""
    app()


if __name__ == "__main__":
    sys.exit(main())
