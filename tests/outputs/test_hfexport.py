"""The hf export of a real run, read back with `datasets` and `huggingface_hub`."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.outputs.authors import export_json
from mmevol.outputs.formats import ExportOptions
from mmevol.outputs.hfexport import export_hf, size_category
from mmevol.outputs.training import export_training


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def kept(authors, rounds=(1, 2, 3)):
    return [(s["hash_id"], r) for s in authors for r in rounds if s.get(f"conversations_v{r}")]


@pytest.fixture(scope="module")
def authors(demo_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("authors") / "evolved.json"
    export_json(demo_run.results_db, out)
    return json.loads(out.read_text())


def test_hf_folder_loads_with_datasets_and_has_a_card(demo_run, authors, tmp_path):
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    out = tmp_path / "mmevol-hf"
    opts = ExportOptions(rounds=(0, 1, 2, 3), image_max_side=32, steps="field")
    report = export_training(demo_run.results_db, out, "hf", opts)
    expected = kept(authors, rounds=(0, 1, 2, 3)) + []
    # Round 0: every finished sample has seed items.
    assert report.per_round[0] == len(authors)
    assert report.written == len(kept(authors)) + len(authors)
    assert not report.skipped

    shards = sorted((out / "data").glob("*.parquet"))
    assert [p.name for p in shards] == ["train-00000-of-00001.parquet"]
    by_parquet = load_dataset("parquet", data_dir=str(out / "data"), split="train")
    by_folder = load_dataset(str(out), split="train")  # the card's configs name the files
    assert by_parquet.num_rows == by_folder.num_rows == report.written
    ids = by_parquet["id"]
    assert sorted(ids) == sorted(f"{h}_v{r}" for h, r in expected)
    row = by_parquet[0]
    assert row["image"].size[0] <= 32 and row["image"].size[1] <= 32  # decoded PIL image
    assert row["image_path"] == authors[0]["image"]
    assert [m["role"] for m in row["messages"]][:2] == ["user", "assistant"]
    assert all("<image>" not in m["content"] for m in row["messages"])
    assert len(row["steps"]) == len(row["messages"]) // 2
    evolved = by_parquet.filter(lambda r: r["round"] > 0)
    assert all(s is not None for scores in evolved["scores"] for s in scores)

    card = DatasetCard.load(out / "README.md")
    assert card.data.size_categories == [size_category(report.written)]
    assert "visual-question-answering" in card.data.task_categories
    facts = card.data.to_dict()["mmevol"]
    assert facts["evolution_model"] == demo_run.model
    assert facts["rounds"] == 3 and facts["operator_seed"] == demo_run.seed
    assert facts["records_per_round"] == {f"v{r}": n for r, n in sorted(report.per_round.items())}
    assert facts["cost_usd"] >= 0 and facts["calls"] > 0
    assert "arXiv:2409.05840" in card.text
    assert not (tmp_path / "mmevol-hf.part").exists()


def test_full_size_images_and_several_shards(demo_run, authors, tmp_path):
    from datasets import load_dataset

    out = tmp_path / "hf"
    report = export_hf(demo_run.results_db, out, ExportOptions(), shard_bytes=1, group_records=4)
    shards = sorted((out / "data").glob("*.parquet"))
    total = len(shards)
    assert total > 1
    names = [f"train-{n:05d}-of-{total:05d}.parquet" for n in range(total)]
    assert [p.name for p in shards] == names
    loaded = load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert loaded["id"] == [f"{h}_v{r}" for h, r in kept(authors)]  # seed order
    original = (demo_run.images / authors[0]["image"]).read_bytes()
    raw = loaded.cast_column("image", loaded.features["image"].__class__(decode=False))
    assert raw[0]["image"]["bytes"] == original  # embedded as-is
    assert report.written == loaded.num_rows


def test_push_without_a_token_is_a_clear_error(demo_run, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(hub, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    result = invoke(
        "export", "--run", "demo", "--checkpoints", demo_run.checkpoints, "--format", "hf",
        "--push-to-hub", "someone/mmevol-test", "-o", tmp_path / "hf",
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: --push-to-hub needs a Hugging Face token: set HF_TOKEN or run `hf auth login`"
    )
    assert not (tmp_path / "hf").exists()  # checked before anything is written


def test_missing_extra_names_it(demo_run, tmp_path, monkeypatch):
    # A None entry in sys.modules makes `import datasets` raise ImportError, as it does
    # when the package is not installed.
    monkeypatch.setitem(sys.modules, "datasets", None)
    result = invoke(
        "export", "--run", "demo", "--checkpoints", demo_run.checkpoints, "--format", "hf",
        "-o", tmp_path / "hf",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "pip install 'mmevol[hf]'" in result.output
    assert "datasets is missing" in result.output
