"""The command line, driven through typer's CliRunner against the simulated endpoint."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import typer
from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.graph.config import Settings
from mmevol.store.results import Store

runner = CliRunner()


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def test_every_command_has_help_text():
    for command in app.registered_commands:
        assert command.callback.__doc__, command.name
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    for name in ("run", "status", "export", "serve-sim", "demo"):
        assert name in result.output


def test_bracketed_words_of_help_texts_survive_rich_markup():
    # Issue 19.13: "needs mmevol[plots]" showed as "needs mmevol", replay's --base-url
    # lost "[default: the run's]": rich took them for markup.
    command = typer.main.get_command(app)
    for name, sub in command.commands.items():
        shown = " ".join(invoke(name, "--help", env={"COLUMNS": "400"}).output.split())
        for param in sub.params:
            for words in re.findall(r"\[[^\]]*\]", getattr(param, "help", None) or ""):
                words = words.replace("\\[", "[")
                assert words in shown, (name, param.name, words)


def test_serve_sim_reports_the_cached_share_it_is_given():
    import signal
    import subprocess
    import sys

    import openai

    process = subprocess.Popen(
        [sys.executable, "-m", "mmevol", "serve-sim", "--port", "0", "--cached-share", "0.5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = process.stdout.readline().strip()
        reply = openai.OpenAI(
            base_url=base_url, api_key="t", max_retries=0
        ).chat.completions.create(model="m", messages=[{"role": "user", "content": "x" * 400}])
        assert reply.usage.prompt_tokens_details.cached_tokens == reply.usage.prompt_tokens // 2
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
    result = invoke("serve-sim", "--cached-share", "2")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: cached_share must be between 0 and 1"


def test_run_status_export(sim, demo_seed, tmp_path):
    seed_path, images = demo_seed
    env = {"OPENAI_API_KEY": "sim"}
    result = invoke(
        "run", seed_path, "--images", images, "--run", "cli", "--limit", 3,
        "--base-url", sim.base_url, "--concurrency", 2, env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "run 'cli': 3 done, 0 failed, 0 skipped" in result.output

    result = invoke("status", "--run", "cli", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["samples"] == {"done": 3}
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    assert {c["node"] for c in summary["calls"]} == {"evolve", "score"}

    result = invoke("status", "--run", "cli")
    assert result.exit_code == 0 and "samples done 3" in result.output

    out = tmp_path / "out.json"
    result = invoke("export", "--run", "cli", "-o", out)
    assert result.exit_code == 0, result.output
    assert len(json.loads(out.read_text())) == 3


def test_run_takes_base_url_more_than_once_and_status_counts_each(sim_factory, demo_seed, tmp_path):
    seed_path, images = demo_seed
    a, b = sim_factory(seed=0, latency_ms=5), sim_factory(seed=1, latency_ms=5)
    result = invoke(
        "run", seed_path, "--images", images, "--run", "two", "--limit", 4,
        "--base-url", a.base_url, "--base-url", b.base_url, env={"OPENAI_API_KEY": "sim"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "checkpoints" / "two" / "results.db") as store:
        assert store.get_meta("settings")["base_url"] == [a.base_url, b.base_url]
    summary = json.loads(invoke("status", "--run", "two", "--json").output)
    rows = {r["endpoint"]: r for r in summary["endpoints"]}
    assert set(rows) == {a.base_url, b.base_url}
    assert sum(r["calls"] for r in rows.values()) == sum(c["calls"] for c in summary["calls"])
    assert all(r["answered"] > 0 for r in rows.values())
    shown = invoke("status", "--run", "two").output
    assert "endpoints" in shown and a.base_url in shown and b.base_url in shown


def test_status_of_a_one_endpoint_run_has_no_endpoint_table(sim, demo_seed):
    seed_path, images = demo_seed
    result = invoke(
        "run", seed_path, "--images", images, "--run", "one", "--limit", 1,
        "--base-url", sim.base_url, env={"OPENAI_API_KEY": "sim"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(invoke("status", "--run", "one", "--json").output)
    assert [r["endpoint"] for r in summary["endpoints"]] == [sim.base_url]
    shown = invoke("status", "--run", "one").output
    assert "calls" in shown and "endpoints" not in shown


def test_base_urls_come_from_the_environment_separated_by_spaces(sim_factory, demo_seed):
    seed_path, images = demo_seed
    a, b = sim_factory(seed=0), sim_factory(seed=1)
    result = invoke(
        "run", seed_path, "--images", images, "--run", "env", "--limit", 2,
        env={"OPENAI_API_KEY": "sim", "OPENAI_BASE_URL": f" {a.base_url}  {b.base_url}\n"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(invoke("status", "--run", "env", "--json").output)
    assert {r["endpoint"] for r in summary["endpoints"]} == {a.base_url, b.base_url}


def test_a_budget_stop_exits_3_and_says_why(sim, demo_seed, tmp_path):
    seed_path, images = demo_seed
    result = invoke(
        "run", seed_path, "--images", images, "--run", "budget", "--max-calls", 5,
        "--base-url", sim.base_url, "--concurrency", 2, env={"OPENAI_API_KEY": "sim"},
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "Stopped: reached --max-calls 5, counted over every invocation" in result.output
    assert "raise --max-calls" in result.output


def test_missing_key_is_one_line(demo_seed, sim):
    seed_path, images = demo_seed
    result = invoke("run", seed_path, "--images", images, "--base-url", sim.base_url)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: OPENAI_API_KEY is not set. Export it (any value, e.g. EMPTY, for a local vLLM "
        "or SGLang server) and run again."
    ]


def test_unknown_run_and_missing_seed(tmp_path):
    result = invoke("status", "--run", "nope")
    assert result.exit_code == 1
    assert "Error: no run named 'nope' under" in result.output
    result = invoke("run", tmp_path / "missing.jsonl", env={"OPENAI_API_KEY": "x"})
    assert result.exit_code == 1
    assert "Error: seed" in result.output and "does not exist" in result.output
    assert not (tmp_path / "checkpoints").exists(), "no run folder for a missing seed"


@pytest.mark.parametrize(("option", "value"), [("--rounds", 0), ("--concurrency", 0)])
def test_bad_option_values(option, value, demo_seed):
    seed_path, images = demo_seed
    result = invoke("run", seed_path, option, value, env={"OPENAI_API_KEY": "x"})
    assert result.exit_code == 1
    assert "must be at least 1" in result.output


def test_demo(tmp_path):
    result = invoke("demo", "--samples", 4, "--checkpoints", tmp_path / "ck")
    assert result.exit_code == 0, result.output
    assert "demo: 4 samples evolved, 0 failed" in result.output
    exported = json.loads((tmp_path / "ck" / "demo" / "evolved.json").read_text())
    assert len(exported) == 4
    assert all("conversations_v3" in s for s in exported)


def run_cli(seed_path, images, sim, name, *extra):
    return invoke(
        "run", seed_path, "--images", images, "--run", name, "--base-url", sim.base_url,
        "--concurrency", 2, *extra, env={"OPENAI_API_KEY": "sim"},
    )  # fmt: skip


def test_failed_samples_exit_4_and_a_resume_says_how_to_retry(sim, demo_seed, tmp_path):
    # Reported: a resumed run skipped failed samples silently, and `mmevol run` exited 0
    # with failed samples.
    seed_path, images = demo_seed  # 8 good rows, then 4 bad ones
    result = run_cli(seed_path, images, sim, "fails")
    assert result.exit_code == 4, result.output
    assert "run 'fails': 8 done, 4 failed, 0 skipped" in result.output
    assert "exit status 4: 4 samples failed" in result.output

    result = run_cli(seed_path, images, sim, "fails")
    assert result.exit_code == 4, result.output
    assert "4 samples that failed earlier were not run again" in result.output
    assert "--retry-failed" in result.output

    result = invoke("run", "--help")
    for code in (0, 1, 2, 3, 4, 5, 130):  # every exit status is documented
        assert re.search(rf"^\s*{code}\s+\w", result.output, re.MULTILINE), code


def test_export_says_what_it_did_not_write(sim, demo_seed, tmp_path):
    seed_path, images = demo_seed  # 12 rows: 8 good, 4 bad
    # Stopped by the call budget: some samples done, some interrupted, some never started.
    result = run_cli(seed_path, images, sim, "part", "--max-calls", 10)
    assert result.exit_code == 3, result.output
    out = tmp_path / "part.json"
    result = invoke("export", "--run", "part", "-o", out)
    assert result.exit_code == 0, result.output
    summary = json.loads(invoke("status", "--run", "part", "--json").output)["samples"]
    written = len(json.loads(out.read_text()))
    assert written == summary.get("done", 0)
    unfinished = summary.get("interrupted", 0)
    never = 12 - sum(summary.values())
    assert unfinished > 0 and never > 0
    text = " ".join(result.output.split())
    assert f"wrote {written} samples to" in text
    assert f"not written: {unfinished} unfinished (interrupted" in text
    assert f"{never} never started" in text

    result = run_cli(seed_path, images, sim, "whole")
    out = tmp_path / "whole.json"
    result = invoke("export", "--run", "whole", "-o", out)
    text = " ".join(result.output.split())
    assert "wrote 8 samples" in text and "not written: 4 failed" in text
    assert "unfinished" not in text and "never started" not in text


def test_export_words_never_started_for_limit_and_shard_runs(sim, demo_seed, tmp_path):
    # Issue 19.14: rows past --limit (or of no shard's concern) were "not reached yet".
    seed_path, images = demo_seed
    run_cli(seed_path, images, sim, "lim", "--limit", 3)
    result = invoke("export", "--run", "lim", "-o", tmp_path / "lim.json")
    text = " ".join(result.output.split())
    assert "9 never started (seed rows this run has not reached, or past its --limit 3)" in text
    run_cli(seed_path, images, sim, "sh", "--shard", "1/2", "--max-calls", 4)
    result = invoke("export", "--run", "sh", "-o", tmp_path / "sh.json")
    text = " ".join(result.output.split())
    assert "never started (rows of shard 1/2 this run has not reached)" in text


def test_round_counts_add_up(sim, demo_seed, tmp_path):
    # Reported: candidates, kept and dropped did not add up in `status` and the demo.
    seed_path, images = demo_seed
    run_cli(seed_path, images, sim, "sums")
    summary = json.loads(invoke("status", "--run", "sums", "--json").output)
    out = tmp_path / "sums.json"
    invoke("export", "--run", "sums", "-o", out)
    exported = json.loads(out.read_text())
    with Store(tmp_path / "checkpoints" / "sums" / "results.db") as store:
        drops = store.rows("dropped")
    by_stage = {}
    for row in summary["dropped"]:
        by_stage[row["stage"]] = by_stage.get(row["stage"], 0) + row["items"]
    total = {"judge": 0, "parse": 0, "check": 0}
    for r in summary["rounds"]:
        n = r["round"]
        kept = sum(len(s[f"conversations_v{n}"]) for s in exported)
        judged_out = sum(1 for d in drops if d["round"] == n and d["stage"] == "judge")
        assert r["kept"] == kept
        assert r["judged_out"] == judged_out
        assert r["candidates"] == r["kept"] + r["judged_out"]
        for stage in ("parse", "check"):
            count = sum(1 for d in drops if d["round"] == n and d["stage"] == stage)
            assert r[f"dropped_{stage}"] == count
            total[stage] += count
        total["judge"] += judged_out
    for stage, n in total.items():
        assert by_stage.get(stage, 0) == n, stage
    text = invoke("status", "--help").output
    assert "candidates" in text and "judged out" in text


def test_demo_counts_add_up(tmp_path):
    from mmevol.sim.demo import run_demo

    result = run_demo(tmp_path / "ck", samples=4)

    lines = [line for line in result.summary.splitlines() if line.startswith("  round")]
    assert len(lines) == 3
    for line in lines:
        numbers = re.search(r"(\d+) candidates = (\d+) kept \+ (\d+) judged out", line)
        assert numbers, line
        candidates, kept, judged_out = map(int, numbers.groups())
        assert candidates == kept + judged_out
    # The trace example the demo (and the README) suggest exists in the demo run.
    from mmevol.sim.demo import TRACE_EXAMPLE

    assert f"mmevol trace {TRACE_EXAMPLE} --run demo" in result.summary
    trace = invoke("trace", TRACE_EXAMPLE, "--run", "demo", "--checkpoints", tmp_path / "ck")
    assert trace.exit_code == 0, trace.output
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"mmevol trace {TRACE_EXAMPLE} --run demo" in readme


def one_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_a_spent_budget_says_to_raise_it_and_costs_nothing_more(sim, demo_seed):
    """The bug: "run the same command again" after --max-cost made 16 more calls and stopped."""
    seed_path, images = demo_seed
    env = {"OPENAI_API_KEY": "sim"}
    args = (
        "run", seed_path, "--images", images, "--run", "budget", "--base-url", sim.base_url,
        "--max-cost", "0.0001",
    )  # fmt: skip
    first = invoke(*args, env=env)
    assert first.exit_code == 3, first.output
    assert "raise --max-cost" in first.output and "spent $" in first.output
    assert "run the same command again" not in first.output
    before = sim.stats()["requests"]
    again = invoke(*args, env=env)
    assert again.exit_code == 3, again.output
    assert "raise --max-cost" in again.output
    assert sim.stats()["requests"] == before
    raised = invoke(*args[:-1], "10", env=env)
    # The seed is through; its four bad rows failed (exit 4), nothing stopped the run.
    assert raised.exit_code == 4 and "4 samples failed" in raised.output, raised.output


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--image-max-side", 0, "--image-max-side must be at least 1"),
        ("--max-cost", "nan", "--max-cost must be a number"),
        ("--max-cost", "-1", "--max-cost must be a number"),
        ("--limit", -1, "--limit must be at least 0"),
        ("--concurrency", -3, "--concurrency must be at least 1"),
        ("--workers", 0, "--workers must be at least 1"),
        ("--rpm", 0, "--rpm must be a positive number"),
        ("--tpm", "nan", "--tpm must be a positive number"),
        ("--scorer-rpm", "inf", "--scorer-rpm must be a positive number"),
        ("--max-calls", 0, "--max-calls must be at least 1"),
        ("--temperature", "nan", "--temperature must be a number"),
        ("--max-tokens", 0, "--max-tokens must be at least 1"),
        ("--chunk-size", 0, "--chunk-size must be at least 1"),
        ("--image-detail", "huge", "--image-detail must be low, high or auto"),
        ("--shard", "0/3", "--shard I/N needs 1 <= I <= N"),
        ("--shard", "4/3", "--shard I/N needs 1 <= I <= N"),
        ("--shard", "1/0", "--shard I/N needs 1 <= I <= N"),
        ("--shard", "3", "--shard must be I/N, two whole numbers"),
        ("--shard", "a/3", "--shard must be I/N, two whole numbers"),
        ("--shard", "1.5/3", "--shard must be I/N, two whole numbers"),
    ],
)
def test_bad_values_are_one_line_and_nothing_is_written(option, value, words, demo_seed, tmp_path):
    seed_path, images = demo_seed
    result = invoke(
        "run", seed_path, "--images", images, option, value, "--checkpoints", tmp_path / "ck",
        env={"OPENAI_API_KEY": "x"},
    )  # fmt: skip
    assert result.exit_code == 1
    assert words in one_line(result)
    assert not (tmp_path / "ck").exists()


BAD_NAMES = ["../escape", "/abs", "..", "", ".", ".hidden", "a/b", "a\\b", "-x", "ü"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_run_names_stay_inside_checkpoints(name, demo_seed, tmp_path):
    seed_path, images = demo_seed
    ck = tmp_path / "deep" / "ck"
    env = {"OPENAI_API_KEY": "x", "MMEVOL_CHECKPOINTS": str(ck)}
    for args in (
        ("run", seed_path, "--images", images),
        ("status",),
        ("export", "-o", tmp_path / "out.json"),
        ("trace", "x"),
        ("replay", "x", "--from", 1),
    ):
        result = invoke(*args, f"--run={name}", env=env)
        assert result.exit_code == 1, (args, result.output)
        assert "run name" in one_line(result), args
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing written anywhere"


def test_plain_run_names_are_accepted():
    from mmevol.graph.config import Settings

    for name in ("v1", "mmevol-v1.2_final", "A", "1.0"):
        assert Settings(run=name).run == name


def _done_run(sim, demo_seed):
    seed_path, images = demo_seed
    result = invoke(
        "run", seed_path, "--images", images, "--run", "ex", "--limit", 2,
        "--base-url", sim.base_url, env={"OPENAI_API_KEY": "sim"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def test_export_to_a_folder_is_one_line_and_leaves_nothing(sim, demo_seed, tmp_path):
    _done_run(sim, demo_seed)
    folder = tmp_path / "folder"
    folder.mkdir()
    result = invoke("export", "--run", "ex", "-o", folder)
    assert result.exit_code == 1
    assert "is a folder" in one_line(result)
    assert list(folder.iterdir()) == [] and not list(tmp_path.glob("*.part"))


def test_export_to_a_full_disk_is_one_line(sim, demo_seed):
    """No tmpfs can be made small without root tricks: /dev/full answers every write ENOSPC."""
    _done_run(sim, demo_seed)
    result = invoke("export", "--run", "ex", "-o", "/dev/full")
    assert result.exit_code == 1
    assert "no space left" in one_line(result).lower()


def test_an_export_that_fails_midway_keeps_the_old_file_and_no_part(sim, demo_seed, tmp_path):
    """A file size limit (RLIMIT_FSIZE) makes the write fail after the first bytes."""
    import os
    import resource
    import signal
    import subprocess
    import sys

    _done_run(sim, demo_seed)
    target = tmp_path / "out" / "evolved.json"
    target.parent.mkdir()
    target.write_text("old")

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))

    proc = subprocess.run(
        [sys.executable, "-m", "mmevol", "export", "--run", "ex", "-o", str(target)],
        env=dict(os.environ), preexec_fn=small_files, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["evolved.json"]


def test_an_unwritable_checkpoints_folder_is_one_line(demo_seed, sim):
    """Tests run as root, whom chmod does not stop: /sys refuses every new entry."""
    seed_path, images = demo_seed
    result = invoke(
        "run", seed_path, "--images", images, "--checkpoints", "/sys/mmevol-checkpoints",
        "--base-url", sim.base_url, env={"OPENAI_API_KEY": "sim"},
    )  # fmt: skip
    assert result.exit_code == 1
    line = one_line(result)
    assert "/sys/mmevol-checkpoints" in line and "--checkpoints" in line


def test_a_full_disk_mid_run_is_one_line_and_the_run_resumes(seed16, reference16, sim, tmp_path):
    """A file size limit (RLIMIT_FSIZE) stands in for a full disk: no tmpfs without root tricks.

    SQLite then fails its writes as on a full disk (SQLITE_FULL or SQLITE_IOERR).
    """
    import os
    import resource
    import signal
    import subprocess
    import sys

    seed_path, images = seed16

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    env = {**os.environ, "OPENAI_API_KEY": "sim", "MMEVOL_CHECKPOINTS": str(tmp_path / "ck")}
    cmd = [
        sys.executable, "-m", "mmevol", "run", str(seed_path), "--images", str(images),
        "--run", "full", "--base-url", sim.base_url, "--concurrency", "4",
    ]  # fmt: skip
    full = subprocess.run(cmd, env=env, preexec_fn=small_files, capture_output=True, text=True)
    assert full.returncode == 1, full.stderr
    errors = [line for line in full.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "free some space" in errors[0], full.stderr
    assert "Traceback" not in full.stderr
    again = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    out = tmp_path / "out.json"
    assert invoke("export", "--run", "full", "-o", out, env=env).exit_code == 0
    assert json.loads(out.read_text()) == reference16[0]


# Options of `run` that are not settings: they say how to run, not what the run is.
RUN_ONLY = {"retry_failed", "help"}


def click_params(name):
    command = typer.main.get_command(app).commands[name]
    return {p.name.removeprefix("settings__"): p for p in command.params}


def test_run_options_and_settings_do_not_drift():
    params = click_params("run")
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    on_cli = {n for n, f in fields.items() if f.metadata.get("cli", True)}
    options = {n for n, p in params.items() if p.param_type_name == "option"} - RUN_ONLY
    assert options == on_cli, "an option of `mmevol run` without a Settings field, or back"
    for name in on_cli:
        field, param = fields[name], params[name]
        assert field.metadata.get("help") and param.help, f"--{name} has no help text"
        flag = field.metadata.get("flag") or "--" + name.replace("_", "-")
        assert flag.split("/")[0] in param.opts, (name, param.opts)
        if field.default is not dataclasses.MISSING:
            assert param.default == field.default, name
    # The fields kept off the command line are the ones that must be (the key) or are
    # not options yet.
    assert "api_key" not in options


def test_every_run_option_reaches_the_settings(sim, demo_seed, tmp_path):
    seed_path, images = demo_seed
    given = {
        "--rounds": 1, "--concurrency": 2, "--workers": 1, "--limit": 1, "--model": "m1",
        "--scorer-model": "m2", "--seed": 7, "--temperature": 0.5, "--max-tokens": 900,
        "--max-attempts": 2, "--chunk-size": 4, "--image-max-side": 256,
        "--image-detail": "high", "--rpm": 6000, "--tpm": 900000, "--scorer-rpm": 5000,
        "--scorer-tpm": 800000, "--max-cost": 9, "--max-calls": 50, "--timeout": 30.0,
        "--retries": 2,
    }  # fmt: skip
    args = [arg for pair in given.items() for arg in pair]
    result = invoke(
        "run", seed_path, "--images", images, "--run", "every", "--base-url", sim.base_url,
        "--checkpoints", tmp_path, "--structured-output", "--keep-history", *args,
        env={"OPENAI_API_KEY": "sim"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "every" / "results.db") as store:
        recorded = store.get_meta("settings")
    for flag, value in given.items():
        name = {"--retries": "max_retries"}.get(flag, flag.removeprefix("--").replace("-", "_"))
        assert recorded[name] == value, flag
    assert recorded["structured_output"] is True and recorded["keep_history"] is True
    assert (recorded["run"], recorded["base_url"]) == ("every", sim.base_url)
    assert "api_key" not in recorded


def test_estimate_takes_its_options_from_settings_too():
    params = click_params("estimate")
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    for name in ("rounds", "limit", "model", "scorer_model", "chunk_size", "prices"):
        shown = params[name].help.replace("\\[", "[")  # rich escapes
        assert shown.startswith(fields[name].metadata["help"]), name
        assert params[name].default == fields[name].default, name


def test_serve_sim_takes_the_batch_options():
    command = [sys.executable, "-m", "mmevol", "serve-sim", "--port", "0"]
    command += ["--batch-turnaround", "100", "--batch-expire-after", "10"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        base_url = process.stdout.readline().strip()
        api = openai.OpenAI(base_url=base_url, api_key="t", max_retries=0)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body}
        upload = api.files.create(file=("in.jsonl", json.dumps(line).encode()), purpose="batch")
        batch = api.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.expires_at == batch.created_at + 10
        assert api.batches.retrieve(batch.id).request_counts.completed == 0
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()


def test_version():
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0, result.output
    assert result.output == f"mmevol {version('mmevol')}\n"


def test_steps_field_stores_null_for_no_manipulation(demo_run, tmp_path):
    # Issue 19.13: a step without a manipulation was exported as the string "None".
    out = tmp_path / "llava.json"
    result = invoke(
        "export", "--run", demo_run.run, "--checkpoints", demo_run.checkpoints,
        "--format", "llava", "--steps", "field", "-o", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    steps = [s for r in json.loads(out.read_text()) for pair in r["steps"] for s in pair]
    manipulations = {s["manipulation"] for s in steps}
    assert None in manipulations and "None" not in manipulations


@pytest.mark.parametrize("score", ["-1", "11"])
def test_min_score_outside_the_judges_scale_is_refused(demo_run, tmp_path, score):
    # Issue 19.13: --min-score 11 silently exported nothing.
    out = tmp_path / "llava.json"
    result = invoke(
        "export", "--run", demo_run.run, "--checkpoints", demo_run.checkpoints,
        "--format", "llava", "--min-score", score, "-o", out,
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: --min-score must be from 0 to 10 (the judge's scale), not {score}\n"
    )
    assert not out.exists()


def test_tests_never_write_to_the_users_huggingface_cache():
    # Issue 19.13: the hf export tests filled ~/.cache/huggingface.
    import datasets.config
    import huggingface_hub.constants as hub

    home = Path.home()
    root = Path(os.environ["HF_HOME"]).parent
    for path in (datasets.config.HF_DATASETS_CACHE, hub.HF_HUB_CACHE, hub.HF_HOME):
        assert Path(path).is_relative_to(root) and not Path(path).is_relative_to(home), path


README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_exit_status_table_says_what_run_help_says():
    # Issue 19.14: the README's table and `mmevol run --help` described the statuses apart.
    table = re.search(r"\| status \| meaning \|\n\|---\|---\|\n((?:\|.*\n)+)", README.read_text())
    documented = {
        int(code): " ".join(text.split())
        for code, text in re.findall(r"^\| (\d+) \| (.*) \|$", table[1], re.MULTILINE)
    }
    helptext = invoke("run", "--help", env={"COLUMNS": "400"}).output
    block = helptext[helptext.index("Exit status:") : helptext.index("Every option but")]
    block = " ".join(line.strip(" │") for line in block.splitlines())
    shown = {
        int(code): " ".join(text.split())
        for code, text in re.findall(r"(?:^|\s)(\d{1,3})\s{2,}(.*?)(?=\s\d{1,3}\s{2,}|$)", block)
    }
    assert sorted(documented) == [0, 1, 2, 3, 4, 5, 130]
    assert documented == shown


def test_batch_limits_are_one_number_everywhere():
    # Issue 19.14: the run split shards at 200,000,000 bytes, serve-sim refused above 200 MiB.
    from mmevol.sim.options import SimOptions

    command = typer.main.get_command(app)
    sim_params = {p.name: p.default for p in command.commands["serve-sim"].params}
    fields = {f.name: f.default for f in dataclasses.fields(Settings)}
    for name in ("batch_max_requests", "batch_max_bytes"):
        assert fields[name] == sim_params[name] == getattr(SimOptions(), name), name
    assert fields["batch_max_bytes"] == 200_000_000 and "200 MB" in README.read_text()
    assert "MiB" not in README.read_text()


def test_readme_serve_sim_walkthrough_works_from_a_fresh_clone(tmp_path):
    # Issue 19.14: the walkthrough's seed was ../shared/mmevol-demo/seed_1612.jsonl.
    text = README.read_text()
    block = text[text.index("To try everything against the simulated endpoint") :]
    block = block[block.index("```bash") : block.index("```", block.index("```bash") + 3)]
    assert "../" not in block
    (draw,) = [line for line in block.splitlines() if line.startswith("python -c ")]
    code = draw.removeprefix("python -c ").strip().strip('"')
    subprocess.run([sys.executable, "-c", code.replace("/tmp/", f"{tmp_path}/")], check=True)
    for path in re.findall(r"(/tmp/\S+)", block.split("mmevol run", 1)[1]):
        assert Path(path.replace("/tmp/", f"{tmp_path}/")).exists(), path
