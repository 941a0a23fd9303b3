"""ovis.data: dataset_info.json, meta file readers, skips (counted and named), mixing, collation."""

from __future__ import annotations

import json
import logging
import pickle
import random
from pathlib import Path

import pytest
from PIL import Image

from ovis.data import (
    DataCollator,
    DataError,
    DatasetInfo,
    Record,
    SkipLog,
    Skipped,
    SupervisedDataset,
    build_dataset,
    load_dataset_info,
    read_datasets,
    read_records,
)
from ovis.interfaces import Message
from ovis.model import IGNORE_INDEX, IMAGE_TOKEN_ID


# -- helpers --------------------------------------------------------------------------------------
def _image(path: Path, colour: str = "red", size: tuple[int, int] = (40, 30)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path.name


def _json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _info(root: Path, entries: dict) -> Path:
    return _json(root / "dataset_info.json", entries)


def _learned(processor, sample) -> str:
    return processor.tokenizer.decode([t for t in sample.labels if t != IGNORE_INDEX])


def _image_blocks(processor, sample) -> int:
    count = sample.input_ids.count(IMAGE_TOKEN_ID)
    assert count % processor.num_image_tokens == 0
    return count // processor.num_image_tokens


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """Five good images under ``data/images``."""
    root = tmp_path / "data"
    for i, colour in enumerate(("red", "green", "blue", "yellow", "white")):
        _image(root / "images" / f"img{i}.png", colour)
    return root


# -- dataset_info.json ----------------------------------------------------------------------------
def test_dataset_info_resolves_paths_against_its_own_directory(tmp_path: Path, monkeypatch):
    root = tmp_path / "sets"
    path = _info(root, {
        "caps": {"meta_file": "meta/caps.parquet", "image_dir": "images", "data_format": "caption"},
        "conv": {"meta_file": "conv.json", "image_dir": None, "data_format": "conversation",
                 "description": "LLaVA style"},
    })
    monkeypatch.chdir(tmp_path)  # not the json's directory: paths must not depend on the cwd
    info = load_dataset_info(path)
    assert isinstance(info, DatasetInfo) and info.path == path
    assert sorted(info) == ["caps", "conv"] and len(info) == 2 and "caps" in info
    assert info.get("caps").caption_template == "<image>'s caption: "
    assert info.meta_path("caps") == root / "meta" / "caps.parquet"
    assert info.image_root("caps") == root / "images"
    assert info.image_root("conv") == root  # no image_dir: relative to the meta file
    assert load_dataset_info(root).path == path  # a directory means its dataset_info.json


def test_dataset_info_errors_name_the_file_and_the_field(tmp_path: Path):
    missing = tmp_path / "nope" / "dataset_info.json"
    with pytest.raises(DataError, match=rf"{missing}: dataset_info file not found"):
        load_dataset_info(missing)

    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"a": {"meta_file": "x.json",\n  "data_format": caption}}')
    with pytest.raises(DataError, match=rf"{bad_json}: not valid JSON at line 2 column"):
        load_dataset_info(bad_json)

    path = _info(tmp_path, {"toy": {"meta_file": "t.json", "data_format": "captions"}})
    with pytest.raises(DataError, match=r"dataset_info.json: toy\.data_format: .*'caption'.*got 'captions'"):
        load_dataset_info(path).check()
    path = _info(tmp_path, {"toy": {"metafile": "t.json", "data_format": "caption"}})
    with pytest.raises(DataError, match=r"toy\.meta_file: Field required; toy\.metafile: Extra inputs"):
        load_dataset_info(path).get("toy")
    path = _info(tmp_path, {"toy": {"meta_file": "t.json", "data_format": "caption",
                                    "caption_template": "describe: "}})
    with pytest.raises(DataError, match=r"toy\.caption_template: must contain <image> exactly once"):
        load_dataset_info(path).check(["toy"])
    path = _info(tmp_path, {"toy": {"meta_file": "t.csv", "data_format": "caption"}})
    with pytest.raises(DataError, match=r"toy\.meta_file: must end with one of \.json"):
        load_dataset_info(path)["toy"]


def test_a_broken_entry_is_refused_only_when_a_run_names_it(tmp_path: Path, toy_processor):
    (tmp_path / "c.json").write_text("[]")
    path = _info(tmp_path, {
        "broken": {"meta_file": "b.csv", "data_format": "caption"},
        "healthy": {"meta_file": "c.json", "data_format": "caption"},
    })
    info = load_dataset_info(path)
    assert list(info) == ["healthy"] and set(info.invalid) == {"broken"}
    info.check(["healthy"])  # the run's own names: fine
    with pytest.raises(DataError, match=r"broken\.meta_file: must end with one of"):
        info.check()
    with pytest.raises(DataError, match=r"broken\.meta_file"):
        build_dataset(path, ["healthy", "broken"], toy_processor)


def test_unknown_dataset_name_suggests_close_matches(tmp_path: Path, toy_processor):
    path = _info(tmp_path, {
        "toy-captions": {"meta_file": "c.json", "data_format": "caption"},
        "toy-conversations": {"meta_file": "v.json", "data_format": "conversation"},
    })
    info = load_dataset_info(path)
    with pytest.raises(DataError, match=r"unknown dataset 'toy-caption'\. Did you mean 'toy-captions'"
                                        r".* Available: toy-captions, toy-conversations"):
        info.get("toy-caption")
    with pytest.raises(KeyError):  # also a KeyError, like a mapping's
        info["nothing-like-it"]
    assert info.get("nothing-like-it", None) is None  # an explicit default, as for any mapping
    # build_dataset checks every name before reading anything (c.json does not even exist)
    with pytest.raises(DataError, match="Did you mean 'toy-conversations'"):
        build_dataset(path, ["toy-captions", "toy-conversation"], toy_processor)


# -- readers and encoding -------------------------------------------------------------------------
def test_caption_parquet_and_json(data_root: Path, toy_processor):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image_path": ["img0.png", "img1.png"],
                             "caption": ["the square is red.", "there are three circles."]}),
                   data_root / "caps.parquet")
    _json(data_root / "caps.json", [{"id": "c0", "image": "img2.png", "caption": "the square is red."}])
    (data_root / "caps.jsonl").write_text(
        json.dumps({"image_path": "img3.png", "caption": "three circles."}) + "\n\n")
    path = _info(data_root, {
        name: {"meta_file": f"caps.{ext}", "image_dir": "images", "data_format": "caption"}
        for name, ext in (("pq", "parquet"), ("js", "json"), ("jl", "jsonl"))
    })
    skips = SkipLog()
    records = read_records(path, "pq", skips)
    assert records[1] == Record(
        id="pq[1]",
        messages=[Message(role="user", content="<image>'s caption: "),
                  Message(role="assistant", content="there are three circles.")],
        images=[data_root / "images" / "img1.png"],
        source="pq[1]",
        file=str(data_root / "caps.parquet"),
    )
    json_records = read_records(path, "js", skips)
    assert json_records[0].id == "c0" and json_records[0].images == [data_root / "images" / "img2.png"]
    assert read_records(path, "jl", skips)[0].messages[1].content == "three circles."
    assert skips.count == 0 and skips.total == 4

    dataset = SupervisedDataset(records, toy_processor, skip_log=skips)
    assert len(dataset) == 2
    sample = dataset[0]
    assert _learned(toy_processor, sample) == "the square is red.\n"
    assert _image_blocks(toy_processor, sample) == 1 and sample.pixel_values.shape == (1, 3, 32, 32)


def test_conversation_json(data_root: Path, toy_processor):
    rows = [
        {"id": "single", "image": "img0.png", "conversations": [
            {"from": "human", "value": "<image>\nwhat colour is the square?"},
            {"from": "gpt", "value": "the square is red."},
            {"from": "human", "value": "how many circles are there?"},
            {"from": "gpt", "value": "there are three circles."}]},
        {"id": "multi", "image": ["img1.png", "img2.png"], "conversations": [
            {"from": "human", "value": "<image>\n<image>\nhow many circles are there?"},
            {"from": "gpt", "value": "three circles."}]},
        {"id": "text", "conversations": [
            {"from": "human", "value": "what colour is the square?"},
            {"from": "gpt", "value": "red."}]},
        {"id": 7, "image": "img3.png", "conversations": [
            {"from": "system", "value": "be brief."},
            {"from": "human", "value": "what colour is the square?"},  # no marker: one is added
            {"from": "gpt", "value": "red."}]},
    ]
    _json(data_root / "conv.json", rows)
    path = _info(data_root, {"conv": {"meta_file": "conv.json", "image_dir": "images",
                                      "data_format": "conversation"}})
    skips = SkipLog()
    records = read_records(load_dataset_info(path), "conv", skips)
    assert skips.count == 0 and [r.id for r in records] == ["single", "multi", "text", "7"]
    assert [r.source for r in records] == [f"conv[{i}]" for i in range(4)]
    assert [len(r.images) for r in records] == [1, 2, 0, 1]
    assert records[1].images == [data_root / "images" / "img1.png", data_root / "images" / "img2.png"]
    assert [m.role for m in records[0].messages] == ["user", "assistant", "user", "assistant"]
    assert [m.role for m in records[3].messages] == ["system", "user", "assistant"]
    assert records[3].messages[1].content == "<image>\nwhat colour is the square?"

    dataset = SupervisedDataset(records, toy_processor, skip_log=skips)
    expected = [("the square is red.\nthere are three circles.\n", 1), ("three circles.\n", 2),
                ("red.\n", 0), ("red.\n", 1)]
    for i, (learned, blocks) in enumerate(expected):
        sample = dataset[i]
        assert _learned(toy_processor, sample) == learned, i
        assert _image_blocks(toy_processor, sample) == blocks == sample.num_images, i
    assert skips.count == 0


# -- skips ----------------------------------------------------------------------------------------
def _broken_files(root: Path) -> None:
    images = root / "images"
    (images / "corrupt.png").write_bytes(random.Random(0).randbytes(300))
    noise = Image.frombytes("RGB", (64, 64), random.Random(1).randbytes(64 * 64 * 3))
    noise.save(images / "whole.png")
    data = (images / "whole.png").read_bytes()
    (images / "truncated.png").write_bytes(data[: len(data) // 2])


def test_bad_records_and_images_are_skipped_counted_and_named(data_root: Path, toy_processor, caplog):
    _broken_files(data_root)
    _json(data_root / "caps.json", [
        {"image_path": "img0.png", "caption": "the square is red."},         # 0 ok
        {"image_path": "missing.png", "caption": "gone."},                   # 1 image not found
        {"image_path": "corrupt.png", "caption": "noise."},                  # 2 unreadable
        {"image_path": "truncated.png", "caption": "half."},                 # 3 truncated
        {"image_path": "img1.png", "caption": ""},                           # 4 missing caption
        {"image_path": "img2.png", "caption": "three circles."},             # 5 ok
    ])
    long_question = "what colour is the square? " * 60
    _json(data_root / "conv.json", [
        {"id": "a", "image": "img3.png", "conversations": [                 # 0 ok
            {"from": "human", "value": "<image>\nwhat colour?"}, {"from": "gpt", "value": "red."}]},
        {"id": "b", "conversations": [{"from": "human", "value": "hello?"}]},  # 1 no assistant turn
        {"id": "c", "conversations": [                                       # 2 unknown role
            {"from": "robot", "value": "hi"}, {"from": "gpt", "value": "hi"}]},
        {"id": "d", "conversations": [                                       # 3 too long
            {"from": "human", "value": long_question}, {"from": "gpt", "value": "red."}]},
        {"id": "e", "conversations": []},                                    # 4 empty conversations
        {"id": "f", "conversations": [                                       # 5 non-string value
            {"from": "human", "value": ["x"]}, {"from": "gpt", "value": "y"}]},
    ])
    path = _info(data_root, {
        "caps": {"meta_file": "caps.json", "image_dir": "images", "data_format": "caption"},
        "conv": {"meta_file": "conv.json", "image_dir": "images", "data_format": "conversation"},
    })
    skips = SkipLog()
    with caplog.at_level(logging.INFO, logger="ovis.data"):
        dataset = build_dataset(path, ["caps", "conv"], toy_processor, skip_log=skips)
    # Malformed records, and those whose image file does not exist, never become records: 4 of caps
    # and 2 of conv are left.
    assert len(dataset) == 6 and skips.total == 12
    assert skips.by_reason() == {"image not found": 1, "missing caption": 1, "no assistant turn": 1,
                                 "unknown role": 1, "empty conversations": 1, "non-string value": 1}
    assert {s.stage for s in skips.entries()} == {"read"}
    assert f"skipping conv[2] ({data_root / 'conv.json'}): unknown role: turn 0 has 'from': 'robot'" \
        in caplog.text
    assert "dataset caps: 4 records (2 skipped)" in caplog.text

    samples = [dataset[i] for i in range(len(dataset))]
    by_source = dict(zip((r.source for r in dataset.records), samples, strict=True))
    skipped = {s: v for s, v in by_source.items() if isinstance(v, Skipped)}
    assert list(skipped) == ["caps[2]", "caps[3]", "conv[3]"]  # found encoding: in place of the sample
    conv_file = str(data_root / "conv.json")
    assert skipped["conv[3]"] == Skipped("conv[3]", "too long", skips.reasons()["conv[3]"], conv_file, "encode")
    reasons = skips.reasons()
    assert reasons["caps[1]"].startswith("image not found: ") and "missing.png" in reasons["caps[1]"]
    assert reasons["caps[2]"].startswith("image unreadable: ") and "corrupt.png" in reasons["caps[2]"]
    assert reasons["caps[3]"].startswith("image truncated or corrupt: ") and "truncated.png" in reasons["caps[3]"]
    assert reasons["conv[3]"].startswith("too long: ")
    assert skips.count == 9
    dataset[1]  # retried (next epoch): counted and logged once
    assert skips.count == 9 and caplog.text.count("skipping caps[1]") == 1

    summary = skips.summary()
    assert summary.splitlines()[0] == "skipped 9 of 12 records:"
    for line in ("1 image not found (caps[1]); e.g. caps[1] in " + str(data_root / "caps.json"),
                 "1 image unreadable (caps[2])", "1 image truncated or corrupt (caps[3])", "1 too long (conv[3])",
                 "1 no assistant turn (conv[1])", "1 unknown role (conv[2])"):
        assert line in summary
    report = skips.report()
    assert report["records_total"] == 12 and report["records_skipped"] == 9
    assert report["by_stage"] == {"read": 6, "encode": 3} and report["by_reason"]["too long"] == 1
    assert report["examples"]["unknown role"][0]["source"] == "conv[2]"

    collate = DataCollator(toy_processor)
    batch = collate(samples)
    assert batch["num_skipped"] == 3 and batch["input_ids"].shape[0] == 3  # caps[0], caps[5], conv[0]
    assert batch["pixel_values"].shape[0] == 3
    assert [s.source for s in batch["skips"]] == ["caps[2]", "caps[3]", "conv[3]"]
    # Every sample skipped: no input_ids (nothing to train on), the skips still reported.
    empty = collate([samples[1], samples[2]])
    assert "input_ids" not in empty and empty["num_skipped"] == 2 and len(empty["skips"]) == 2


@pytest.mark.parametrize("workers", [0, 1])
def test_dataloader_sums_num_skipped_and_carries_the_skips(data_root: Path, toy_processor, workers):
    from torch.utils.data import DataLoader

    _broken_files(data_root)
    _json(data_root / "caps.json", [{"image_path": p, "caption": "red."}
                                    for p in ("img0.png", "corrupt.png", "img1.png", "truncated.png", "img2.png")])
    path = _info(data_root, {"caps": {"meta_file": "caps.json", "image_dir": "images",
                                      "data_format": "caption"}})
    skips = SkipLog()
    dataset = build_dataset(path, ["caps"], toy_processor, skip_log=skips)
    loader = DataLoader(dataset, batch_size=2, collate_fn=DataCollator(toy_processor), num_workers=workers)
    batches = list(loader)
    assert sum(b["num_skipped"] for b in batches) == 2
    assert sum(b["input_ids"].shape[0] for b in batches if "input_ids" in b) == 3
    # A worker's log stays in the worker; the batches bring its skips back, with their reasons.
    assert skips.count == (0 if workers else 2)
    carried = [s for b in batches for s in b["skips"]]
    assert [(s.source, s.kind) for s in carried] == [("caps[1]", "image unreadable"),
                                                     ("caps[3]", "image truncated or corrupt")]


@pytest.mark.parametrize(("meta", "content", "message"), [
    ("missing.json", None, "meta file not found"),
    ("garbage.json", b"this is not json", "not valid JSON at line 1 column 1"),
    ("object.json", b'{"image_path": "a.png"}', "expected a JSON list of records, got dict"),
    ("garbage.jsonl", b"nope\nnope either\n", "no line is valid JSON"),
    ("garbage.parquet", b"PAR1 not really", "not a readable parquet file"),
])
def test_wholly_unreadable_meta_file_fails_fast(tmp_path: Path, toy_processor, meta, content, message):
    if content is not None:
        (tmp_path / meta).write_bytes(content)
    path = _info(tmp_path, {"broken": {"meta_file": meta, "data_format": "caption"}})
    with pytest.raises(DataError, match=rf"{tmp_path / meta}: {message}"):
        build_dataset(path, ["broken"], toy_processor)


def test_mixing_datasets_concatenates_their_records(data_root: Path, toy_processor):
    _json(data_root / "a.json", [{"image_path": f"img{i}.png", "caption": "red."} for i in range(3)])
    _json(data_root / "b.json", [{"id": str(i), "image": "img4.png", "conversations": [
        {"from": "human", "value": "<image> what?"}, {"from": "gpt", "value": "white."}]} for i in range(2)])
    info = DatasetInfo({
        "a": {"meta_file": "a.json", "image_dir": "images", "data_format": "caption"},
        "b": {"meta_file": "b.json", "image_dir": "images", "data_format": "conversation"},
    }, path=data_root / "dataset_info.json")
    dataset = build_dataset(info, ["a", "b"], toy_processor)
    assert len(dataset) == len(read_records(info, "a", SkipLog())) + len(read_records(info, "b", SkipLog())) == 5
    assert [r.source for r in dataset.records] == ["a[0]", "a[1]", "a[2]", "b[0]", "b[1]"]
    assert len(build_dataset(info, "b", toy_processor)) == 2  # one name as a plain string
    assert all(dataset[i] is not None for i in range(5))


def test_skip_log_is_picklable_and_counts_each_source_once(caplog):
    log = SkipLog(max_listed=2)
    assert log.add("x[0]", "image not found: /a.png")
    assert not log.add("x[0]", "image not found: /a.png")
    for i in range(1, 4):
        log.add(f"x[{i}]", "too long: 300 tokens")
    log.add_total(10)
    copy = pickle.loads(pickle.dumps(log))
    assert copy.count == 4 and copy.by_reason() == {"too long": 3, "image not found": 1}
    assert copy.summary() == ("skipped 4 of 10 records:\n"
                              "  3 too long (x[1], x[2], ...); e.g. x[1]: too long: 300 tokens\n"
                              "  1 image not found (x[0]); e.g. x[0]: image not found: /a.png")
    copy.add("x[9]", "bad: y")  # the copy has a working lock and its own counts
    assert copy.count == 5 and log.count == 4
    copy.quiet = True  # counted, not logged
    with caplog.at_level(logging.WARNING, logger="ovis.data"):
        assert copy.add("x[10]", "bad: z") and copy.count == 6
        copy.quiet = False
        copy.add("x[11]", "bad: w")
    assert "x[10]" not in caplog.text and "skipping x[11]: bad: w" in caplog.text


# -- checking the named datasets (ovis.data.validate) ------------------------------------------------
_HEALTHY = {"meta_file": "good.json", "image_dir": "images", "data_format": "caption"}


@pytest.mark.parametrize(("entry", "message"), [
    (["good.json"], r"broken: expected an object of fields, got list"),
    ("good.json", r"broken: expected an object of fields, got str"),
    (None, r"broken: expected an object of fields, got NoneType"),
    ({"data_format": "caption"}, r"broken\.meta_file: Field required"),
    ({"meta_file": "good.json"}, r"broken\.data_format: Field required"),
    ({"meta_file": "good.json", "data_format": "captions"}, r"broken\.data_format: .*got 'captions'"),
    ({"meta_file": "good.txt", "data_format": "caption"}, r"broken\.meta_file: must end with one of"),
    ({"meta_file": " ", "data_format": "caption"}, r"broken\.meta_file: must not be empty"),
    ({"meta_file": 3, "data_format": "caption"}, r"broken\.meta_file: .*got 3"),
    ({"meta_file": "good.json", "data_format": "caption", "image_dir": ["images"]}, r"broken\.image_dir"),
    ({"meta_file": "good.json", "data_format": "caption", "caption_template": "x"},
     r"broken\.caption_template: must contain <image> exactly once"),
    ({"meta_file": "good.json", "data_format": "caption", "imagedir": "images"}, r"broken\.imagedir: Extra"),
    ({"meta_file": "missing.json", "data_format": "caption"}, r"missing\.json: meta file not found"),
    ({"meta_file": "good.json", "image_dir": "nowhere", "data_format": "caption"},
     r"broken\.image_dir: image directory .*nowhere not found \(record broken\[0\] names an image\)"),
    ({"meta_file": "garbage.json", "data_format": "caption"}, r"garbage\.json: not valid JSON at line 1"),
    ("DUPLICATE NAME", r"broken: defined more than once in the file"),
    ("DUPLICATE FIELD", r"broken\.data_format: given more than once in the entry"),
])
def test_every_kind_of_broken_entry_is_refused_only_when_named(data_root: Path, entry, message):
    _json(data_root / "good.json", [{"image_path": "img0.png", "caption": "red."}])
    (data_root / "garbage.json").write_text("nope")
    healthy = json.dumps(_HEALTHY)
    if entry == "DUPLICATE NAME":
        text = f'{{"broken": {healthy}, "healthy": {healthy}, "broken": {healthy}}}'
    elif entry == "DUPLICATE FIELD":
        text = ('{"broken": {"meta_file": "good.json", "data_format": "caption", "data_format": "conversation"}, '
                f'"healthy": {healthy}}}')
    else:
        text = json.dumps({"broken": entry, "healthy": _HEALTHY})
    (data_root / "dataset_info.json").write_text(text)
    skips = SkipLog()
    records = read_datasets(data_root / "dataset_info.json", ["healthy"], skips)  # the file loads
    assert [r.source for r in records] == ["healthy[0]"] and skips.count == 0
    with pytest.raises(DataError, match=message):
        read_datasets(data_root / "dataset_info.json", ["healthy", "broken"])


def test_a_few_bad_records_are_counted_with_their_line_a_wholly_bad_dataset_is_an_error(data_root: Path):
    good = json.dumps({"image_path": "img0.png", "caption": "red."})
    (data_root / "some.jsonl").write_text("\n".join([
        good, "{oops", "", json.dumps({"image_path": "gone.png", "caption": "x"}),
        json.dumps({"image_path": "img1.png"}), good]) + "\n")
    _json(data_root / "none.json", [{"image_path": "img0.png", "caption": ""},
                                    {"image_path": "gone.png", "caption": "x"}])
    _json(data_root / "empty.json", [])
    path = _info(data_root, {
        name: {"meta_file": meta, "image_dir": "images", "data_format": "caption"}
        for name, meta in (("some", "some.jsonl"), ("none", "none.json"), ("empty", "empty.json"))
    })
    skips = SkipLog()
    records = read_datasets(path, ["some"], skips)
    assert [r.source for r in records] == ["some[0]", "some[4]"]
    jsonl = data_root / "some.jsonl"
    assert {s.source: (s.kind, s.file) for s in skips.entries()} == {
        "some[1]": ("not valid JSON", f"{jsonl} line 2"),
        "some[2]": ("image not found", f"{jsonl} line 4"),
        "some[3]": ("missing caption", f"{jsonl} line 5"),
    }
    assert skips.reasons()["some[2]"] == f"image not found: {data_root / 'images' / 'gone.png'}"
    with pytest.raises(DataError, match=rf"{data_root / 'none.json'}: dataset 'none' has no usable record "
                                        r"\(all 2 skipped: 1 missing caption, 1 image not found\); first: none\[0\] "
                                        r".*none\.json\): missing caption: 'caption' is ''"):
        read_datasets(path, ["some", "none"])
    with pytest.raises(DataError, match=r"empty\.json: dataset 'empty' holds no records"):
        read_datasets(path, ["empty"])


def test_data_synth_keeps_what_its_out_directory_holds_unless_told_to_replace_it(tmp_path: Path, capsys):
    from ovis.cli import main

    out = tmp_path / "mine"
    out.mkdir()
    (out / "dataset_info.json").write_text('{"my-data": {}}')
    small = ["--train-images", "3", "--eval-images", "1", "--text-scenes", "1", "--compositional-images", "0"]
    assert main(["data", "synth", "--out", str(out), *small]) == 2
    assert "mine exists and is not empty; choose another --out or pass --overwrite" in capsys.readouterr().err
    assert (out / "dataset_info.json").read_text() == '{"my-data": {}}'
    (out / "images").mkdir()
    (out / "images" / "train-000099.png").write_bytes(b"stale")
    assert main(["data", "synth", "--out", str(out), *small, "--overwrite"]) == 0
    assert "synth-conversations" in json.loads((out / "dataset_info.json").read_text())
    assert sorted(p.name for p in (out / "images").iterdir() if p.name.startswith("train")) == [
        "train-000000.png", "train-000001.png", "train-000002.png"  # nothing of before left
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mine")]  # no temporary left
    with pytest.raises(SystemExit):
        main(["data", "synth", "--out", str(tmp_path / "neg"), "--train-images", "-5"])
    assert "expected a whole number (0 or more), got -5" in capsys.readouterr().err


def test_a_records_fault_is_named_for_what_it_is(data_root: Path, toy_processor):
    _json(data_root / "caps.json", [
        {"image_path": "img0.png", "caption": 5},
        {"image": "img1.png", "text": "a red square."},
        {"image_path": "img2.png", "caption": "three circles."},
    ])
    _json(data_root / "conv.json", [
        {"id": "a", "conversations": "hello"},
        {"id": "b", "conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": " "}]},
        {"id": "c", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello."}]},
    ])
    path = _info(data_root, {
        "caps": {"meta_file": "caps.json", "image_dir": "images", "data_format": "caption"},
        "conv": {"meta_file": "conv.json", "image_dir": "images", "data_format": "conversation"},
    })
    skips = SkipLog()
    assert len(build_dataset(path, ["caps", "conv"], toy_processor, skip_log=skips)) == 2
    reasons = skips.reasons()
    assert reasons["caps[0]"] == "bad caption: 'caption' is int 5; expected text"
    assert reasons["caps[1]"] == "missing caption: no 'caption'; the record has 'image', 'text'"
    assert reasons["conv[0]"] == "bad conversations: 'conversations' is str 'hello'; expected a list"
    assert reasons["conv[1]"].startswith("empty replies: every assistant turn is empty")
