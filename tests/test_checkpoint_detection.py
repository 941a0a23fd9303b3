"""Telling a checkpoint's layout from its config.json (``is_*_checkpoint``): each recognises its own
layout only, and never raises, whatever the file holds."""

import json

import pytest

from ovis.model.ovis2_format import is_hf_ovis2_checkpoint
from ovis.model.ovis2_release_format import is_release_checkpoint
from ovis.model.v1_format import is_original_checkpoint

DETECTORS = {"original": is_original_checkpoint, "hf-ovis2": is_hf_ovis2_checkpoint, "ovis2": is_release_checkpoint}
CONFIGS = {
    "original": {"model_type": "ovis", "visual_tokenizer_config": {"model_type": "clip_visual_tokenizer"}},
    "hf-ovis2": {"model_type": "ovis2"},
    "ovis2": {"model_type": "ovis", "visual_tokenizer_config": {"model_type": "aimv2_visual_tokenizer"}},
    "ovis": {"model_type": "ovis", "vision_spec": {"name": "x"}},
}


@pytest.mark.parametrize("layout", sorted(CONFIGS))
def test_each_detector_recognises_its_own_layout_only(tmp_path, layout):
    (tmp_path / "config.json").write_text(json.dumps(CONFIGS[layout]))
    assert {name for name, detect in DETECTORS.items() if detect(tmp_path)} == ({layout} - {"ovis"})


@pytest.mark.parametrize("text", ["[]", "null", "3", '"ovis"', "{not json", ""])
@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_a_config_that_is_not_a_json_object_is_no_checkpoint(tmp_path, name, text):
    (tmp_path / "config.json").write_text(text)
    assert DETECTORS[name](tmp_path) is False


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_no_directory_or_no_config_is_no_checkpoint(tmp_path, name):
    assert DETECTORS[name](None) is False
    assert DETECTORS[name](tmp_path) is False
    assert DETECTORS[name](tmp_path / "absent") is False
