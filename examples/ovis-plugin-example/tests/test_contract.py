"""The example's ViT and LLM keep ovis's contract for backbones (ovis.testing): they build offline
and on the meta device, train, checkpoint, compose, save and load back."""

from __future__ import annotations

import ovis_example_plugin.plugin as plugin
import pytest

from ovis.testing import check_llm, check_vision_backbone


@pytest.fixture
def example(ovis_plugin):
    """The plugin registered in-process (ovis.testing's fixture), as when it is pip-installed."""
    from ovis.plugin_host import get_host

    if "example" not in get_host().plugins:  # (already there where the package is installed)
        ovis_plugin("example", plugin, distribution="ovis-plugin-example")


def test_the_vit_keeps_the_contract(example, tmp_path):
    check_vision_backbone("example-vit", tmp_path)


def test_the_llm_keeps_the_contract(example):
    check_llm("example-llm")
