"""The plugin spec reference is generated from the pydantic models and cannot drift from them."""

from __future__ import annotations

import inspect

from pydantic import BaseModel

from ovis.interfaces import chat, specs
from ovis.interfaces.spec_reference import MODELS, REGENERATE, main, render

from .conftest import REPO

DOC = REPO / "docs" / "plugin-spec-reference.md"


def test_the_committed_reference_is_what_the_models_generate():
    assert DOC.read_text() == render(), f"docs/plugin-spec-reference.md is out of date: run `{REGENERATE}`"


def test_every_spec_model_is_in_the_reference_with_every_field_described():
    defined = {
        cls for module in (specs, chat) for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, BaseModel) and cls.__module__ == module.__name__
    }
    bases = {specs.BackboneSpec, specs._Strict}  # their fields appear in the specs built on them
    assert defined - bases == set(MODELS)
    undescribed = [f"{m.__name__}.{n}" for m in MODELS for n, f in m.model_fields.items() if not f.description]
    assert undescribed == []


def test_the_reference_answers_what_plugin_authors_asked():
    text = render()
    assert "AutoConfig.for_model(model_type, **rest)" in text
    assert "It must repeat hidden_size, num_layers (as num_hidden_layers) and vocab_size" in text
    assert "build_tokenizer() runs once, when the model is composed" in text


def test_check_fails_on_a_stale_file_and_write_fixes_it(tmp_path, capsys):
    stale = tmp_path / "reference.md"
    stale.write_text(render().replace("| `vocab_size` |", "| `vocab` |"))
    assert main(["--check", str(stale)]) == 1
    assert REGENERATE in capsys.readouterr().err
    assert main(["--write", str(stale)]) == 0
    assert main(["--check", str(stale)]) == 0
