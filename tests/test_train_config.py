"""ovis.train's config: reading YAML and overrides, the errors a bad config gives, the DeepSpeed JSON,
and the generated key reference (docs/training-config.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, Field

from ovis.cli import main
from ovis.errors import ConfigError, InputFileError
from ovis.train import build_deepspeed_config, docs, load_train_config
from ovis.train.deepspeed_config import builtin_deepspeed_config
from ovis.train.loading import dump_config

REPO = Path(__file__).resolve().parents[1]


# -- reading a config ---------------------------------------------------------------------------
def test_yaml_paths_stage_defaults_and_overrides(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    (cfg_dir / "s1.yaml").write_text(yaml.safe_dump({
        "stage": 1, "model": "../models/composed", "output_dir": "runs/s1",
        "data": {"dataset_info": "../data/dataset_info.json", "datasets": ["a"]},
    }))
    monkeypatch.chdir(tmp_path)
    config = load_train_config(cfg_dir / "s1.yaml", ["lr=5e-5", "data.datasets=[a, b]", "tau.end=0.1",
                                                     "deepspeed=zero3", "output_dir=elsewhere"])
    assert config.model == (tmp_path / "models" / "composed").resolve()  # against the YAML's directory
    assert config.data.dataset_info == (tmp_path / "data" / "dataset_info.json").resolve()
    assert config.output_dir == (tmp_path / "elsewhere").resolve()  # --set paths: against the CWD
    assert config.data.datasets == ["a", "b"] and config.lr == 5e-5 and config.tau.end == 0.1
    assert config.deepspeed == "zero3"
    # Stage-1 defaults (Ovis v1 recipe) unless set.
    assert config.train_modules == ["visual_tokenizer.head", "vte", "visual_tokenizer.re_init_layers"]
    assert config.reinit_last_block is True and config.warmup_ratio == 0.1
    stage3 = load_train_config(None, ["stage=3", "model=m", "output_dir=o"])
    assert stage3.train_modules == ["all"] and stage3.lr == 2e-5 and stage3.reinit_last_block is False
    # Stage 0 (not the paper's): the LLM alone, pre-trained on text.
    stage0 = load_train_config(None, ["stage=0", "model=m", "output_dir=o"])
    assert stage0.train_modules == ["llm"] and stage0.reinit_last_block is False
    with pytest.raises(ValueError, match="stage"):
        load_train_config(None, ["stage=4", "model=m", "output_dir=o"])


def test_unknown_keys_are_named_with_the_valid_ones(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "output_dir": "o", "data": {"datasetz": ["a"]}}))
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown config key 'data\.datasetz'; did you mean 'data\."
                                         r"datasets'\? Valid keys under 'data': dataset_info, datasets, max_length"):
        load_train_config(path)
    with pytest.raises(ValueError, match=r"key 'learning_rate'; did you mean 'lr'\? Valid keys: .*\blr\b"):
        load_train_config(None, ["model=m", "output_dir=o", "learning_rate=1"])
    with pytest.raises(ValueError, match=r"unknown config key 'num_train_epochs'; did you mean 'epochs'\?"):
        load_train_config(None, ["model=m", "output_dir=o", "num_train_epochs=1"])
    with pytest.raises(ValueError, match="has no sub-keys"):
        load_train_config(None, ["model=m", "output_dir=o", "lr.x=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_train_config(None, ["lr"])


def test_a_key_given_twice_in_the_yaml_is_named_not_silently_replaced(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("model: m\noutput_dir: o\nlr: 1.0e-4\ndata:\n  datasets: [a]\nlr: 3.0e-4\n")
    with pytest.raises(ValueError, match=r"twice\.yaml: not valid YAML \(key 'lr' is given twice \(first at line 3\)"
                                         r".* at line 6, column 1\)"):
        load_train_config(path)


def test_bad_train_modules_token_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"'vision'.*valid: all, llm, visual_tokenizer"):
        load_train_config(None, ["model=m", "output_dir=o", "train_modules=[llm, vision]"])


def test_print_config(tmp_path, capsys):
    assert main(["train", "--set", "model=m", "--set", "output_dir=o", "--set", "lr=0.5", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["lr"] == 0.5 and printed["model"] == str(Path("m").resolve())


def test_deepspeed_auto_values_filled_and_conflicts_refused(tmp_path):
    config = load_train_config(None, ["model=m", "output_dir=o", "per_device_batch_size=4",
                                      "gradient_accumulation_steps=2", "lr=1e-3", "precision=fp32"])
    ds = build_deepspeed_config(config, world_size=2, hidden_size=256, on_cuda=False)
    assert ds["train_batch_size"] == 16 and ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 2 and ds["gradient_clipping"] == 1.0
    assert ds["optimizer"]["params"]["torch_adam"] is True and ds["optimizer"]["params"]["lr"] == 1e-3
    assert ds["optimizer"]["params"]["fused"] is True  # torch's fused AdamW has a CPU kernel too
    assert ds["bf16"]["enabled"] is False and ds["zero_optimization"]["stage"] == 2
    assert "auto" not in json.dumps(ds)
    cuda = build_deepspeed_config(config, world_size=1, hidden_size=256, on_cuda=True)["optimizer"]["params"]
    assert cuda["torch_adam"] is True and cuda["fused"] is True  # torch's fused CUDA AdamW: nothing to build
    # The JSON files in configs/deepspeed are the built-ins.
    for name in ("zero2", "zero3"):
        assert json.loads((REPO / "configs" / "deepspeed" / f"{name}.json").read_text()) == \
            builtin_deepspeed_config(name)
    explicit = builtin_deepspeed_config("zero2") | {"train_micro_batch_size_per_gpu": 8}
    (tmp_path / "ds.json").write_text(json.dumps(explicit))
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu is 8 but the training config gives 4"):
        build_deepspeed_config(config.model_copy(update={"deepspeed": str(tmp_path / "ds.json")}),
                               world_size=1, hidden_size=256, on_cuda=False)
    (tmp_path / "sched.json").write_text(json.dumps(builtin_deepspeed_config("zero2") | {"scheduler": {}}))
    with pytest.raises(ValueError, match="scheduler"):
        build_deepspeed_config(config.model_copy(update={"deepspeed": str(tmp_path / "sched.json")}),
                               world_size=1, hidden_size=256, on_cuda=False)


# -- errors a config can give -----------------------------------------------------------------------
def test_invalid_values_are_config_errors_naming_the_file_and_the_field(tmp_path, capsys):
    path = tmp_path / "stage.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "output_dir": "o", "lr": -1, "data": {"max_length": 0}}))
    with pytest.raises(ConfigError) as caught:
        load_train_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert "lr: Input should be greater than or equal to 0 (got -1)" in message
    assert "data.max_length: Input should be greater than 0 (got 0)" in message
    with pytest.raises(ConfigError, match=r"training config with overrides: output_dir: Field required"):
        load_train_config(None, ["model=m"])
    with pytest.raises(ConfigError, match=r"deepspeed: Input should be a valid string \(got 5\)"):
        load_train_config(None, ["model=m", "output_dir=o", "deepspeed=5"])
    # On the command line: one line naming the file and the field, exit code 2, no traceback.
    assert main(["train", "--config", str(path), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: training config {path}: ") and " lr: " in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(("content", "where"), [
    (b"model: m\noutput_dir: o\nlr: 1e-4\n\tseed: 1\n", r"found character '\\t' .* at line 4, column 1"),
    (b"model: m\noutput_dir: a: b\n", r"mapping values are not allowed here at line 2, column 14"),
    (b"model: m\nnote: a\x00b\n", r"character U\+0000 is not allowed in YAML at line 2, column 8"),
    (b"model: m\n---\nlr: 1\n", r"expected a single document in the stream but found another document at line 2"),
    (b"model: m\nnote: caf\xe9\n", r"not UTF-8 text \(byte 0xe9 at line 2, column 10\)"),
])
def test_a_config_file_that_is_not_yaml_is_named_with_line_and_column(tmp_path, capsys, content, where):
    path = tmp_path / "stage.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: .*{where}") as caught:
        load_train_config(path)
    assert "<unicode string>" not in str(caught.value)
    assert main(["train", "--config", str(path), "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: ") and len(err.splitlines()) == 1 and "<unicode string>" not in err


def test_an_override_with_a_character_yaml_refuses_is_named():
    with pytest.raises(ConfigError, match=r"override 'note=a\\x00': .*U\+0000 is not allowed in YAML at line 1, "
                                          r"column 2") as caught:
        load_train_config(None, ["note=a\x00"])
    assert "<unicode string>" not in str(caught.value)


def test_missing_or_malformed_config_files(tmp_path):
    with pytest.raises(InputFileError, match="training config .*nowhere.yaml not found"):
        load_train_config(tmp_path / "nowhere.yaml")
    (tmp_path / "broken.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML \(.* at line 2, column 1\)$"):
        load_train_config(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- model\n")
    with pytest.raises(ConfigError, match="list.yaml: the top level must be a mapping"):
        load_train_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match=r"override 'lr=\[1': the value is not valid YAML \(expected ',' or ']'"):
        load_train_config(None, ["lr=[1"])
    missing = load_train_config(None, ["model=m", "output_dir=o", f"deepspeed={tmp_path}/missing.json"])
    with pytest.raises(InputFileError, match="DeepSpeed config .*missing.json not found"):
        build_deepspeed_config(missing, world_size=1, hidden_size=8, on_cuda=False)


def test_deepspeed_null_selects_the_plain_pytorch_loop(tmp_path):
    path = tmp_path / "plain.yaml"
    path.write_text("model: m\noutput_dir: o\ndeepspeed: null\n")
    config = load_train_config(path)
    assert config.deepspeed is None
    assert yaml.safe_load(dump_config(config))["deepspeed"] is None
    assert load_train_config(None, ["model=m", "output_dir=o", "deepspeed=null"]).deepspeed is None
    assert load_train_config(None, ["model=m", "output_dir=o", "deepspeed=~"]).deepspeed is None
    with pytest.raises(ValueError, match="deepspeed set"):
        build_deepspeed_config(config, world_size=1, hidden_size=8, on_cuda=False)


# -- the generated reference ------------------------------------------------------------------------
def test_the_committed_key_reference_is_what_the_schema_generates():
    assert docs.DOC_PATH == REPO / "docs" / "training-config.md"
    assert docs.DOC_PATH.read_text() == docs.render(), "stale: python -m ovis.train.docs --write"
    assert docs.main(["--check"]) == 0


def test_the_reference_lists_every_key_with_its_default(tmp_path):
    text = docs.render()
    assert "| `deepspeed` | string or null | `zero2` |" in text
    assert "| `lora.dropout` | number, >= 0, < 1 | `0.05` |" in text
    assert "| `lr` | number, >= 0 | by stage: 0: `0.0001`, 1: `0.0001`, 2: `0.0001`, 3: `2.0e-05` |" in text
    stale = tmp_path / "stale.md"
    stale.write_text(text.replace("AdamW epsilon", "epsilon"))
    assert docs.main(["--check", str(stale)]) == 1
    assert docs.main(["--write", str(stale)]) == 0 and stale.read_text() == text


def test_a_field_without_a_description_is_refused():
    class Undocumented(BaseModel):
        documented: int = Field(default=1, description="Fine.")
        bare: int = 2

    with pytest.raises(ValueError, match="Undocumented.bare has no Field"):
        docs._sections(Undocumented, "")


def test_an_output_dir_that_is_a_file_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "results").write_text("mine")
    with pytest.raises(ValueError, match=r"output_dir: .*results is a file; output_dir is a directory"):
        load_train_config(None, ["model=m", f"output_dir={tmp_path / 'results'}"])
    assert main(["eval", "--model", "m", "--synth", "--out", str(tmp_path / "results")]) == 2
    assert (tmp_path / "results").read_text() == "mine"


@pytest.mark.parametrize("override, message", [
    ("save_steps=yes", r"save_steps is True, a boolean \(YAML reads yes / no"),
    ("lora.r=on", r"r is True, a boolean"),
    ("data.datasets=[a, b, a]", r"data\.datasets: 'a' named more than once"),
])
def test_slips_yaml_or_pydantic_would_let_through_are_refused(override, message):
    with pytest.raises(ValueError, match=message):
        load_train_config(None, ["model=m", "output_dir=o", override])
    assert load_train_config(None, ["model=m", "output_dir=o", "lr=1e-4", "max_steps=null"]).lr == 1e-4
