"""The hf export of a real run, read back with `datasets` and `huggingface_hub`, and checked
against the layout TRL's vision collator and the vision processors' chat templates expect."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

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
    texts = [p["text"] for m in row["messages"] for p in m["content"] if p["type"] == "text"]
    assert texts and all(t.strip() and "<image>" not in t for t in texts)
    assert row["images"][0].size == row["image"].size  # the image, twice: images and image
    assert len(row["steps"]) == len(row["messages"]) // 2
    evolved = by_parquet.filter(lambda r: r["round"] > 0)
    assert all(s is not None for scores in evolved["scores"] for s in scores)

    card = DatasetCard.load(out / "README.md")
    assert card.data.license == "other" and "**License: not set.**" in card.text
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


# -- TRL ---------------------------------------------------------------------------------
# The rules below are those of TRL 1.16's DataCollatorForVisionLanguageModeling and
# trl.data_utils.prepare_multimodal_messages, read from its source: an example needs
# `messages` and `images` (older releases read `images` only: KeyError 'images'); a user
# turn whose content is already a list of parts is kept as it is (a string one gets the
# image parts put before its text); every part of type "image" without an "image" value is
# a placeholder, and placeholders must be as many as the images, which fill them in order.
# The processor's chat template then renders each image part as the model's image tokens.

TRL_ROLES = {"system", "user", "assistant", "tool"}


def trl_messages(example: dict) -> list[dict]:
    """Apply TRL's rules to one example; return the messages with the images filled in."""
    if "image" in example:  # TRL 1.16 accepts a single image too; older releases do not
        example = {**example, "images": [example["image"]]}
    images = example["images"]
    messages = []
    included = False
    for message in example["messages"]:
        assert message["role"] in TRL_ROLES
        content = message["content"]
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
            if message["role"] == "user" and not included:
                parts = [{"type": "image"} for _ in images] + parts
                included = True
            content = parts
        messages.append({**message, "content": content})
    holes = [p for m in messages for p in m["content"] if p["type"] == "image" and "image" not in p]
    if len(holes) != len(images):
        raise ValueError(f"{len(images)} images for {len(holes)} image placeholders")
    filled = iter(images)
    return [
        {
            **m,
            "content": [
                {**p, "image": next(filled)} if p["type"] == "image" and "image" not in p else p
                for p in m["content"]
            ],
        }
        for m in messages
    ]


def render(messages: list[dict]) -> str:
    """Render messages as the Qwen2-VL chat template does (image parts as vision tokens)."""
    text = ""
    for message in messages:
        text += f"<|im_start|>{message['role']}\n"
        for part in message["content"]:
            if part["type"] == "image":
                text += "<|vision_start|><|image_pad|><|vision_end|>"
            elif part["type"] == "text":
                text += part["text"]
        text += "<|im_end|>\n"
    return text


def test_hf_rows_have_the_layout_trl_and_vision_templates_expect(demo_run, authors, tmp_path):
    from datasets import load_dataset

    out = tmp_path / "hf"
    export_training(demo_run.results_db, out, "hf", ExportOptions(image_max_side=32))
    ds = load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert {"images", "messages", "image"} <= set(ds.column_names)
    for row in ds:
        assert len(row["images"]) == 1
        first = row["messages"][0]
        assert first["role"] == "user" and first["content"][0]["type"] == "image"
        messages = trl_messages(row)  # the rules, with the `image` column too
        messages = trl_messages({k: v for k, v in row.items() if k != "image"})
        assert messages[0]["content"][0]["image"] is row["images"][0]
        text = render(messages)
        assert text.count("<|image_pad|>") == 1 and "<image>" not in text
        roles = [m["role"] for m in messages]
        assert roles == ["user", "assistant"] * (len(roles) // 2)

    # --no-image-column stores each image once; TRL reads `images` alone.
    slim = tmp_path / "slim"
    export_training(
        demo_run.results_db, slim, "hf", ExportOptions(image_max_side=32, image_column=False)
    )
    ds = load_dataset("parquet", data_dir=str(slim / "data"), split="train")
    assert "image" not in ds.column_names
    trl_messages(ds[0])


class TemplateProcessor:
    """Stands in for a vision processor in TRL's collator (no model can be downloaded here):
    renders each conversation with `render` and turns characters into ids."""

    def __init__(self):
        self.texts: list[str] = []
        self.images: list[list] = []

    def apply_chat_template(self, conversations, **kwargs):
        import torch

        assert kwargs["tokenize"] and kwargs["return_dict"]
        self.texts = [render(messages) for messages in conversations]
        self.images = [
            [p["image"] for m in messages for p in m["content"] if p["type"] == "image"]
            for messages in conversations
        ]
        width = max(len(t) for t in self.texts)
        ids = [[ord(c) % 50000 for c in t] + [0] * (width - len(t)) for t in self.texts]
        mask = [[1] * len(t) + [0] * (width - len(t)) for t in self.texts]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}


def test_trl_collator_takes_the_rows(demo_run, tmp_path):
    pytest.importorskip("trl", reason="TRL (and torch) are not installed")
    from datasets import load_dataset
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    out = tmp_path / "hf"
    export_training(demo_run.results_db, out, "hf", ExportOptions(image_max_side=32))
    ds = load_dataset("parquet", data_dir=str(out / "data"), split="train")
    processor = TemplateProcessor()
    collator = DataCollatorForVisionLanguageModeling(processor)
    for columns in (ds.column_names, [c for c in ds.column_names if c != "image"]):
        batch = [{c: ds[n][c] for c in columns} for n in range(4)]
        output = collator(batch)
        assert output["labels"].shape == output["input_ids"].shape
        assert [t.count("<|image_pad|>") for t in processor.texts] == [1] * 4
        assert [len(i) for i in processor.images] == [1] * 4
        assert processor.images[0][0].size == ds[0]["images"][0].size


def readme_snippet(marker: str) -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


def test_readme_trl_snippet_runs(demo_run, tmp_path, monkeypatch):
    pytest.importorskip("trl", reason="TRL (and torch) are not installed")
    export_training(demo_run.results_db, tmp_path / "mmevol-hf", "hf")
    monkeypatch.chdir(tmp_path)
    exec(readme_snippet("prepare_multimodal_messages"), {})


def test_split_and_license_reach_the_card(demo_run, authors, tmp_path):
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    from mmevol.outputs.formats import split_of

    out = tmp_path / "hf"
    result = invoke(
        "export", "--run", "demo", "--checkpoints", demo_run.checkpoints, "--format", "hf",
        "--split", "val=0.4", "--license", "cc-by-4.0", "--image-max-side", "32", "-o", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "data").glob("*.parquet")) == [
        "train-00000-of-00001.parquet", "val-00000-of-00001.parquet",
    ]  # fmt: skip
    loaded = load_dataset(str(out))  # the card names both splits
    assert set(loaded) == {"train", "val"}
    expected = {"train": [], "val": []}
    for h, r in kept(authors):
        expected[split_of(h, ("val", 0.4))].append(f"{h}_v{r}")
    assert expected["val"] and expected["train"]
    for name in ("train", "val"):
        assert loaded[name]["id"] == expected[name]
    card = DatasetCard.load(out / "README.md")
    assert card.data.license == "cc-by-4.0" and "License: `cc-by-4.0`." in card.text
    sizes = {s["name"]: s["num_examples"] for s in card.data.to_dict()["dataset_info"]["splits"]}
    assert sizes == {name: len(ids) for name, ids in expected.items()}
    assert card.data.to_dict()["mmevol"]["records_per_split"] == sizes
    # Reported by a trial: load_dataset warned "Ignoring part of dataset_info from the
    # dataset card: The splits field in YAML is malformed" (no num_bytes). Accepted now:
    # datasets reads the card's splits (it drops them, with that warning, when malformed),
    # and the bytes are the Arrow bytes it counts itself when loading, within 1%.
    from datasets.info import DatasetInfosDict

    read = DatasetInfosDict.from_dataset_card_data(card.data)["default"].splits
    for name, ids in expected.items():
        assert read[name].num_examples == len(ids)
        counted = loaded[name].info.splits[name].num_bytes
        assert abs(read[name].num_bytes - counted) <= counted / 100
    assert f"splits train {sizes['train']}, val {sizes['val']}" in result.output
