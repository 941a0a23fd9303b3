"""Every training config shipped under ``configs/`` is valid, and the recipes match the v1 recipe.

Which YAML files are checked: every ``*.yaml`` / ``*.yml`` under ``configs/`` is a training
config, **except** a file whose top level is a mapping with a ``kind`` key (``kind: eval``,
``kind: serve``...). ``TrainConfig`` has no ``kind`` field (a test below keeps it that way), so such
a file can never be loaded by ``ovis train`` and is clearly something else; every other YAML file is
validated, so a new training config cannot slip through unchecked. A YAML file that does not parse
counts as a training config (and fails, naming the file).

Each training config must: load with ``load_train_config`` (unknown keys fail); use only valid
``train_modules`` tokens; name a DeepSpeed config (a built-in name or an existing JSON file) that
``build_deepspeed_config`` can fill without contradicting the training config; point
``data.dataset_info`` at a file that loads, naming every dataset of ``data.datasets``. A
``dataset_info`` that is missing *and* lies under the repository's git-ignored ``runs/`` or
``outputs/`` is data a command generates (e.g. ``ovis data synth --out runs/...``): only the
dataset checks are skipped for it.

Recipes (``configs/recipes/<name>/stage{1,2,3}.yaml``) must also chain (stage N+1's ``model`` is
stage N's ``output_dir/final``, stage 1's comes from the ``ovis compose`` command documented at the
top of ``stage1.yaml``) and carry the Ovis v1 hyperparameters of ``V1_STAGES`` (with the per-model
differences of the original scripts in ``V1_EXCEPTIONS``).
"""

from __future__ import annotations

import itertools
import json
import shlex
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from ovis.data.schema import DatasetEntry, load_dataset_info
from ovis.train.config import TRAIN_MODULE_TOKENS, TrainConfig
from ovis.train.deepspeed_config import BUILTIN_DEEPSPEED, build_deepspeed_config, read_deepspeed_config
from ovis.train.loading import load_train_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
RECIPES = CONFIGS / "recipes"
SHIPPED_DATASET_INFO = CONFIGS / "data" / "dataset_info.json"
#: git-ignored output folders: a dataset_info.json there is written by a command, not shipped.
GENERATED_DIRS = (REPO / "runs", REPO / "outputs")
KNOWN_DATA_FORMATS = get_args(DatasetEntry.model_fields["data_format"].annotation)

#: The Ovis v1 recipe (the Ovis-Clip-Qwen1.5-7B scripts), per stage.
V1_STAGES: dict[int, dict[str, Any]] = {
    1: {"train_modules": {"visual_tokenizer.head", "vte", "visual_tokenizer.re_init_layers"},
        "reinit_last_block": True, "max_length": 1024, "lr": 1e-4, "warmup_ratio": 0.1, "zero": 2,
        "gradient_accumulation_steps": 128},
    2: {"train_modules": {"visual_tokenizer", "vte"}, "reinit_last_block": False, "max_length": 2048,
        "lr": 1e-4, "warmup_ratio": 0.1, "zero": 3, "gradient_accumulation_steps": 16},
    3: {"train_modules": {"all"}, "reinit_last_block": False, "max_length": 2048, "lr": 2e-5,
        "warmup_ratio": 0.05, "zero": 3, "gradient_accumulation_steps": 16},
}
#: Common to every stage.
V1_COMMON: dict[str, Any] = {
    "per_device_batch_size": 8, "epochs": 1.0, "lr_scheduler": "cosine", "weight_decay": 0.0,
    # The original trained in bf16; ``auto`` resolves to bf16 on every GPU that has it (and to fp32
    # on a CPU without native bf16, where bf16 would run ~60x slower).
    "max_grad_norm": 1.0, "precision": "auto", "gradient_checkpointing": True,
}
#: (recipe, stage) -> values where that model's original script differs from the 7B table.
V1_EXCEPTIONS: dict[tuple[str, int], dict[str, Any]] = {
    ("ovis-clip-llama3-8b", 3): {"lr": 1e-5},  # Ovis-Clip-Llama3-8B-S3: learning rate 1e-5
    ("ovis-clip-qwen1.5-14b", 1): {"zero": 3},  # Ovis-Clip-Qwen1.5-14B-S1: zero3.json
}
#: The recipes for the seed's three models must exist (more may be added).
SEED_RECIPES = ("ovis-clip-qwen1.5-7b", "ovis-clip-llama3-8b", "ovis-clip-qwen1.5-14b")


# -- discovery -----------------------------------------------------------------------------------
def is_training_config(path: Path) -> bool:
    """The rule of the module docstring: a training config unless it has a top-level ``kind``."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return True  # fails in the tests with the parser's message
    return not (isinstance(raw, dict) and "kind" in raw)


def _yaml_files() -> list[Path]:
    return sorted({p for pattern in ("*.yaml", "*.yml") for p in CONFIGS.rglob(pattern)})


TRAINING_CONFIGS = [p for p in _yaml_files() if is_training_config(p)]
RECIPE_DIRS = sorted(d for d in RECIPES.iterdir() if d.is_dir()) if RECIPES.is_dir() else []
RECIPE_STAGES = [(d, n) for d in RECIPE_DIRS for n in (1, 2, 3)]


def _id(path: Path) -> str:
    return path.relative_to(CONFIGS).as_posix()


def _recipe_config(recipe: Path, stage: int) -> TrainConfig:
    return load_train_config(recipe / f"stage{stage}.yaml")


def _v1_expected(recipe: Path, stage: int) -> dict[str, Any]:
    return {**V1_COMMON, **V1_STAGES[stage], **V1_EXCEPTIONS.get((recipe.name, stage), {})}


def _is_generated(path: Path) -> bool:
    return any(path.resolve().is_relative_to(d.resolve()) for d in GENERATED_DIRS)


def test_discovery_finds_the_recipes_and_the_rule_holds():
    assert "kind" not in TrainConfig.model_fields, "the discovery rule relies on TrainConfig having no 'kind'"
    found = {_id(p) for p in TRAINING_CONFIGS}
    for name in SEED_RECIPES:
        for stage in (1, 2, 3):
            assert f"recipes/{name}/stage{stage}.yaml" in found
    assert {d.name for d in RECIPE_DIRS} >= set(SEED_RECIPES)


# -- every training config -----------------------------------------------------------------------
@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=_id)
def test_config_loads_with_valid_train_modules(path: Path):
    config = load_train_config(path)  # unknown keys, bad values and bad tokens raise here
    assert config.train_modules, f"{_id(path)}: train_modules is empty"
    bad = [t for t in config.train_modules if t not in TRAIN_MODULE_TOKENS]
    assert not bad, f"{_id(path)}: unknown train_modules {bad}; valid: {TRAIN_MODULE_TOKENS}"


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=_id)
def test_deepspeed_config_exists_and_fits_the_training_config(path: Path):
    config = load_train_config(path)
    if config.deepspeed is None:
        # One process, the PyTorch engine (the quick-start's and the toy preset build's: Muon runs
        # only there); nothing to fill.
        assert config.optimizer == "muon" and _id(path).startswith(("quickstart/", "presets/")), (
            f"{_id(path)}: deepspeed: null outside the quick-start and the toy preset builds; "
            "shipped recipes run on DeepSpeed"
        )
        return
    if config.deepspeed not in BUILTIN_DEEPSPEED:
        ds_path = Path(config.deepspeed)
        assert ds_path.is_file(), f"{_id(path)}: DeepSpeed config {ds_path} does not exist"
        raw = json.loads(ds_path.read_text(encoding="utf-8"))  # invalid JSON fails here
        assert isinstance(raw, dict), f"{ds_path}: the top level must be an object"
    ds = read_deepspeed_config(config.deepspeed)
    assert ds.get("zero_optimization", {}).get("stage") in (0, 1, 2, 3), f"{config.deepspeed}: no ZeRO stage"
    # every "auto" can be filled and nothing set in the JSON contradicts the training config
    build_deepspeed_config(config, world_size=8, hidden_size=4096, on_cuda=False)


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=_id)
def test_datasets_are_defined_in_the_dataset_info(path: Path, tmp_path: Path):
    config = load_train_config(path)
    info_path = config.data.dataset_info
    assert info_path is not None, f"{_id(path)}: set data.dataset_info"
    assert config.data.datasets, f"{_id(path)}: data.datasets is empty"
    if _is_generated(info_path):
        # Written by `ovis data synth` (under runs/ or outputs/): check against what the current
        # generator writes, not against whatever an older run left there.
        from ovis.data.synth import SynthSpec, write_synthetic_dataset

        info_path = write_synthetic_dataset(tmp_path, SynthSpec(train_images=4, eval_images=1), progress=False)
    assert info_path.is_file(), f"{_id(path)}: data.dataset_info {info_path} does not exist"
    info = load_dataset_info(info_path)  # DataError names a bad entry
    missing = [name for name in config.data.datasets if name not in info]
    assert not missing, f"{_id(path)}: datasets {missing} are not defined in {info_path}"
    assert len(set(config.data.datasets)) == len(config.data.datasets), f"{_id(path)}: a dataset is listed twice"


# -- recipes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", RECIPE_DIRS, ids=lambda d: d.name)
def test_recipe_has_stages_1_2_3(recipe: Path):
    files = sorted(p.name for p in recipe.iterdir() if p.suffix in (".yaml", ".yml"))
    assert files == ["stage1.yaml", "stage2.yaml", "stage3.yaml"]
    assert [_recipe_config(recipe, n).stage for n in (1, 2, 3)] == [1, 2, 3]


@pytest.mark.parametrize("recipe", RECIPE_DIRS, ids=lambda d: d.name)
def test_recipe_stages_chain(recipe: Path):
    configs = [_recipe_config(recipe, n) for n in (1, 2, 3)]
    for earlier, later in itertools.pairwise(configs):
        assert later.model == earlier.output_dir / "final", (
            f"{recipe.name} stage {later.stage}: model {later.model} is not stage {earlier.stage}'s "
            f"export {earlier.output_dir / 'final'}"
        )
    outputs = [c.output_dir for c in configs]
    assert len(set(outputs)) == 3, f"{recipe.name}: stages share an output_dir"
    assert not any(configs[0].model.is_relative_to(out) for out in outputs)


def _preset_names(kind: str) -> set[str]:
    names: set[str] = set()
    for preset in (REPO / "registry" / kind).glob("*.yaml"):
        raw = yaml.safe_load(preset.read_text(encoding="utf-8")) or {}
        names.add(raw.get("name", preset.stem))
        names.update(raw.get("aliases") or [])
    return names


@pytest.mark.parametrize("recipe", RECIPE_DIRS, ids=lambda d: d.name)
def test_stage1_documents_the_compose_command_that_makes_its_model(recipe: Path):
    text = (recipe / "stage1.yaml").read_text(encoding="utf-8")
    commands = [line.lstrip("# ").strip() for line in text.splitlines()
                if line.startswith("#") and "ovis compose" in line]
    assert commands, f"{recipe.name}/stage1.yaml: document the `ovis compose ... --out DIR` command in a comment"
    args = shlex.split(commands[0])
    options = {a: b for a, b in itertools.pairwise(args) if a.startswith("--")}
    assert options.get("--vit") in _preset_names("vision"), f"unknown --vit in {commands[0]!r}"
    assert options.get("--llm") in _preset_names("llm"), f"unknown --llm in {commands[0]!r}"
    assert "--out" in options, f"no --out in {commands[0]!r}"
    # the command runs from the repository root; its --out is the directory stage 1 starts from
    assert (REPO / options["--out"]).resolve() == _recipe_config(recipe, 1).model


@pytest.mark.parametrize(("recipe", "stage"), RECIPE_STAGES, ids=lambda v: v.name if isinstance(v, Path) else f"s{v}")
def test_recipe_stage_matches_the_v1_hyperparameters(recipe: Path, stage: int):
    config = _recipe_config(recipe, stage)
    expected = _v1_expected(recipe, stage)
    zero = read_deepspeed_config(config.deepspeed)["zero_optimization"]["stage"]
    actual = {
        "train_modules": set(config.train_modules),
        "reinit_last_block": config.reinit_last_block,
        "max_length": config.data.max_length,
        "zero": zero,
        **{key: getattr(config, key) for key in expected
           if key not in ("train_modules", "reinit_last_block", "max_length", "zero")},
    }
    mismatches = {key: (actual[key], value) for key, value in expected.items()
                  if (actual[key] != pytest.approx(value) if isinstance(value, float) else actual[key] != value)}
    assert not mismatches, f"{recipe.name} stage {stage}: (config, v1) differ: {mismatches}"
    assert config.deepspeed not in BUILTIN_DEEPSPEED, "recipes name a JSON file under configs/deepspeed"
    assert Path(config.deepspeed).parent == CONFIGS / "deepspeed"


def test_print_config_shows_the_resolved_recipe(capsys):
    from ovis.cli import main

    path = RECIPES / "ovis-clip-qwen1.5-7b" / "stage1.yaml"
    assert main(["train", "--config", str(path), "--print-config"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["stage"] == 1 and shown["data"]["max_length"] == 1024
    assert Path(shown["model"]) == (REPO / "runs" / "ovis-clip-qwen1.5-7b" / "composed").resolve()
    assert Path(shown["deepspeed"]) == CONFIGS / "deepspeed" / "zero2.json"


# -- the shipped dataset_info.json ---------------------------------------------------------------
def _is_relative_inside(value: str) -> bool:
    path = Path(value)
    return not path.is_absolute() and not value.startswith("~") and ".." not in path.parts


def test_shipped_dataset_info_uses_known_formats_and_relative_paths():
    raw = json.loads(SHIPPED_DATASET_INFO.read_text(encoding="utf-8"))
    info = load_dataset_info(SHIPPED_DATASET_INFO)
    assert set(info) == set(raw) and len(info) > 0
    for name, entry in info.items():
        assert entry.data_format in KNOWN_DATA_FORMATS, f"{name}: data_format {entry.data_format!r}"
        assert raw[name]["data_format"] in KNOWN_DATA_FORMATS
        assert _is_relative_inside(entry.meta_file), f"{name}: meta_file {entry.meta_file!r} must be relative"
        assert entry.image_dir is None or _is_relative_inside(entry.image_dir), (
            f"{name}: image_dir {entry.image_dir!r} must be relative"
        )
        assert entry.description.strip(), f"{name}: give a description (what it is and where it comes from)"
        assert info.meta_path(name).is_relative_to(SHIPPED_DATASET_INFO.parent)


def test_stage1_recipes_train_on_caption_data_with_the_v1_template():
    info = load_dataset_info(SHIPPED_DATASET_INFO)
    for recipe in RECIPE_DIRS:
        config = _recipe_config(recipe, 1)
        if config.data.dataset_info != SHIPPED_DATASET_INFO:
            continue
        for name in config.data.datasets:
            assert info[name].data_format == "caption", f"{recipe.name} stage 1: {name} is not caption data"
            assert info[name].caption_template == "<image>'s caption: "
