"""What an export may publish and overwrite (issue 19): every image checked under its root,
never the run's own files, a symlink or a device written through, a wrong root loud."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.graph.config import Settings
from mmevol.outputs.authors import export_json
from mmevol.sim.demo_seed import make_demo_seed
from mmevol.store.results import Store

SECRET = b"root:x:0:0:root:/root:/bin/bash SECRET-LINE\n"


def invoke(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def authors(demo_run, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("authors") / "evolved.json"
    export_json(demo_run.results_db, out)
    return json.loads(out.read_text())


@pytest.fixture
def run_copy(demo_run, demo_seed, tmp_path):
    """A copy of the demo run with its own seed file and image folder (tests may break them)."""
    checkpoints = tmp_path / "checkpoints"
    folder = checkpoints / "demo"
    shutil.copytree(demo_run.checkpoints / "demo", folder)
    seed = tmp_path / "seed.jsonl"
    shutil.copy(demo_seed[0], seed)
    images = tmp_path / "images"
    shutil.copytree(demo_run.images, images)
    with Store(folder / "results.db") as store:
        store.set_meta("seed", str(seed))
        store.set_meta("settings", store.get_meta("settings") | {"images": str(images)})
    return SimpleNamespace(
        checkpoints=checkpoints, folder=folder, db=folder / "results.db", seed=seed, images=images
    )


def export(run, *args):
    return invoke("export", "--run", "demo", "--checkpoints", run.checkpoints, *args)


def kept_rounds(sample: dict) -> list[int]:
    return [r for r in (1, 2, 3) if sample.get(f"conversations_v{r}")]


# -- 1. every image resolved inside the root and decoded --------------------------------


def tamper(images: Path, relative: str, tmp_path: Path, how: str) -> None:
    """Make one image a symlink out of the root, or a file that is no image."""
    target = images / relative
    target.unlink()
    if how == "symlink out":
        secret = tmp_path / "passwd"
        secret.write_bytes(SECRET)
        target.symlink_to(secret)
    else:
        target.write_bytes(SECRET)


def exported_text(fmt: str, out: Path) -> str:
    if fmt != "hf":
        return out.read_text()
    import pyarrow.parquet as pq

    text = []
    for shard in sorted((out / "data").glob("*.parquet")):
        table = pq.read_table(shard).to_pylist()
        for row in table:
            assert SECRET not in row["image"]["bytes"]  # never embedded
            text.append(row["id"])
    return "\n".join(text)


@pytest.mark.parametrize("how", ["symlink out", "not an image"])
@pytest.mark.parametrize("fmt", ["authors", "llava", "sharegpt", "hf"])
def test_an_image_out_of_the_root_or_not_an_image_is_skipped_and_named(
    run_copy, authors, tmp_path, fmt, how
):
    victim = authors[1]
    tamper(run_copy.images, victim["image"], tmp_path, how)
    out = tmp_path / ("out" if fmt == "hf" else "out.json")
    result = export(run_copy, "--format", fmt, "-o", out)
    assert result.exit_code == 0, result.output
    kind = "image outside the image root" if how == "symlink out" else "image unreadable"
    text = exported_text(fmt, out)
    assert victim["hash_id"] not in text
    assert "passwd" not in text and "SECRET" not in text
    if fmt == "authors":
        assert len(json.loads(text)) == len(authors) - 1
        assert f"1 skipped for their image ({kind} 1)" in result.output
        assert f"skipped: sample {victim['hash_id']}: image" in result.output
    else:
        lost = len(kept_rounds(victim))
        assert f"skipped {lost} records ({kind} {lost})" in result.output
        first = kept_rounds(victim)[0]
        assert f"skipped: sample {victim['hash_id']} round {first}: image" in result.output


def test_the_report_counts_and_names_the_images_it_leaves_out(run_copy, authors, tmp_path):
    victim = authors[1]
    tamper(run_copy.images, victim["image"], tmp_path, "symlink out")
    out = tmp_path / "report.html"
    result = invoke(
        "report", "--run", "demo", "--checkpoints", run_copy.checkpoints, "-o", out,
        "--images", run_copy.images,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1 without (image outside the image root 1)" in result.output
    page = out.read_text()
    assert "escapes the image root" in page  # the gallery says why, under the sample
    assert "SECRET" not in page


# -- 2. never the run's own files; symlinks and devices written through -----------------


@pytest.mark.parametrize(
    "name", ["results.db", "graph.sqlite", "results.db-wal", "graph.sqlite-shm", "run.lock"]
)
@pytest.mark.parametrize("fmt", ["authors", "llava"])
def test_export_refuses_to_overwrite_the_run_itself(run_copy, fmt, name):
    before = digest(run_copy.db)
    target = run_copy.folder / name
    existed = target.exists()
    result = export(run_copy, "--format", fmt, "-o", target)
    assert result.exit_code == 1, result.output
    assert "is a file of the run" in result.output
    assert digest(run_copy.db) == before
    assert target.exists() == existed
    assert not list(run_copy.folder.glob("*.part"))


@pytest.mark.parametrize("fmt", ["authors", "sharegpt"])
def test_export_refuses_to_overwrite_the_seed_even_through_a_symlink(run_copy, tmp_path, fmt):
    before = digest(run_copy.seed)
    link = tmp_path / "looks-harmless.json"
    link.symlink_to(run_copy.seed)
    for target in (run_copy.seed, link):
        result = export(run_copy, "--format", fmt, "-o", target)
        assert result.exit_code == 1, result.output
        assert "is the run's seed" in result.output
    assert digest(run_copy.seed) == before
    assert link.is_symlink()


def test_hf_export_refuses_a_folder_holding_the_run(run_copy, tmp_path):
    link = tmp_path / "dataset"
    link.symlink_to(run_copy.checkpoints)
    for target in (run_copy.folder, run_copy.checkpoints, link, run_copy.folder / "batches"):
        result = export(run_copy, "--format", "hf", "-o", target)
        assert result.exit_code == 1, (target, result.output)
        assert "the run" in result.output
    assert run_copy.db.is_file() and not (run_copy.folder / "batches").exists()
    assert link.is_symlink()


def test_an_export_beside_the_runs_files_is_allowed(run_copy):
    # `mmevol demo` writes its export into the run folder: only the run's own files are refused.
    out = run_copy.folder / "evolved.json"
    result = export(run_copy, "-o", out)
    assert result.exit_code == 0, result.output
    assert len(json.loads(out.read_text())) == 8


@pytest.mark.parametrize("fmt", ["authors", "llava", "sharegpt"])
def test_export_writes_through_a_symlink(run_copy, tmp_path, fmt):
    real = tmp_path / "shared" / "evolved.json"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "evolved.json"
    link.symlink_to(real)
    result = export(run_copy, "--format", fmt, "-o", link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.resolve() == real
    assert json.loads(real.read_text())


def test_the_report_writes_through_a_symlink(run_copy, tmp_path):
    real = tmp_path / "site" / "report.html"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "report.html"
    link.symlink_to(real)
    result = invoke("report", "--run", "demo", "--checkpoints", run_copy.checkpoints, "-o", link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and real.read_text().startswith("<!DOCTYPE html>")


def char_device(tmp_path: Path) -> Path:
    """A character device safe to write to: a null device of our own, or /dev/null."""
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # root only
        return node
    except PermissionError:
        return Path("/dev/null")


@pytest.mark.parametrize("fmt", ["authors", "llava", "sharegpt", "hf"])
def test_export_to_a_character_device_leaves_it_a_device(run_copy, tmp_path, fmt):
    device = char_device(tmp_path)
    result = export(run_copy, "--format", fmt, "-o", device)
    assert stat.S_ISCHR(os.stat(device).st_mode)
    if fmt == "hf":
        assert result.exit_code == 1 and "not a folder" in result.output
    else:
        assert result.exit_code == 0, result.output
    if device.parent == tmp_path:
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "checkpoints", "images", "null", "seed.jsonl"
        ]  # fmt: skip


# -- 5. the images path recorded absolute; a wrong root is an error ---------------------


def test_a_run_given_a_relative_images_path_exports_from_anywhere(sim, tmp_path, monkeypatch):
    seed, _ = make_demo_seed(tmp_path / "data", n=3, seed=1)
    monkeypatch.chdir(tmp_path / "data")
    result = invoke(
        "run", seed, "--images", "images", "--run", "rel", "--base-url", sim.base_url,
        env={"OPENAI_API_KEY": "sim"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert Settings(images=Path("images")).images == tmp_path / "data" / "images"

    monkeypatch.chdir(tmp_path)
    for fmt in ("authors", "llava"):
        out = tmp_path / f"{fmt}.json"
        result = invoke("export", "--run", "rel", "--format", fmt, "-o", out)
        assert result.exit_code == 0, result.output
        assert len(json.loads(out.read_text())) >= 3
    result = invoke("report", "--run", "rel", "-o", tmp_path / "report.html")
    assert result.exit_code == 0 and "(3 with their image)" in result.output, result.output


@pytest.mark.parametrize("fmt", ["authors", "llava", "sharegpt", "hf"])
def test_an_old_relative_images_path_that_finds_nothing_fails_with_a_hint(
    run_copy, tmp_path, monkeypatch, fmt
):
    with Store(run_copy.db) as store:  # as 0.2.0 recorded `--images images`
        store.set_meta("settings", store.get_meta("settings") | {"images": "images"})
    work = tmp_path / "work"
    shutil.copytree(run_copy.images, work / "pictures")
    monkeypatch.chdir(work)
    out = tmp_path / ("out" if fmt == "hf" else "out.json")
    result = export(run_copy, "--format", fmt, "-o", out)
    assert result.exit_code == 1, result.output
    assert "is missing under the image root 'images'" in result.output
    assert f"run with --images {work / 'pictures'}" in result.output
    assert not out.exists()  # nothing written, the old output (if any) kept

    result = invoke(
        "report", "--run", "demo", "--checkpoints", run_copy.checkpoints, "-o", tmp_path / "r.html"
    )
    assert result.exit_code == 1, result.output
    assert f"run with --images {work / 'pictures'}" in result.output


@pytest.mark.parametrize("fmt", ["authors", "llava"])
def test_most_images_missing_fails_and_keeps_the_old_output(run_copy, authors, tmp_path, fmt):
    for sample in authors[:5]:  # 5 of 8 samples
        (run_copy.images / sample["image"]).unlink()
    out = tmp_path / "out.json"
    out.write_text("old")
    result = export(run_copy, "--format", fmt, "-o", out)
    assert result.exit_code == 1, result.output
    assert "is missing under the image root" in result.output and "--images" in result.output
    assert out.read_text() == "old"


def test_no_record_from_done_samples_fails(run_copy, tmp_path):
    out = tmp_path / "out.json"
    # The simulated judge scores 9 at most: --min-score 10 keeps no item.
    result = export(run_copy, "--format", "llava", "--min-score", 10, "-o", out)
    assert result.exit_code == 1, result.output
    assert "no record" in result.output and "8 done samples" in result.output
    assert not out.exists()
