"""Plugin discovery and isolation, duplicate policy, lookups and 'did you mean'."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from ovis.interfaces import ImagePreprocessSpec, VisionSpec, hookimpl
from ovis.plugin_host import PluginError, PluginHost, UnknownNameError

from .conftest import EXAMPLE_PLUGIN, REPO


def _spec(name: str, **extra) -> VisionSpec:
    return VisionSpec(
        name=name, family="toy", builder="example-vit", source="other", hidden_size=8, image_size=16,
        patch_size=8, num_layers=1, num_heads=1, tiny=True,
        preprocess=ImagePreprocessSpec(image_size=16), **extra,
    )


def _fake_dist(tmp_path, dist: str, entry: str, module_name: str, module_source: str):
    """A minimal installed distribution on sys.path: dist-info with an ovis.plugins entry point."""
    info = tmp_path / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[ovis.plugins]\n{entry} = {module_name}\n")
    (tmp_path / f"{module_name}.py").write_text(textwrap.dedent(module_source))


def test_a_plugin_that_fails_to_import_is_reported_and_others_keep_working(tmp_path, monkeypatch, example_plugin):
    _fake_dist(tmp_path, "broken-plugin", "broken", "broken_plugin_mod", "raise ImportError('no such lib')\n")
    _fake_dist(tmp_path, "good-plugin", "good", "good_plugin_mod", """
        from ovis.interfaces import hookimpl, VisionSpec, ImagePreprocessSpec
        from ovis_example_plugin.vit import ExampleViT

        @hookimpl
        def register_vision_backbones(register):
            register(VisionSpec(name="good-vit", family="toy", builder="example-vit", source="other",
                hidden_size=8, image_size=16, patch_size=8, num_layers=1, num_heads=1,
                preprocess=ImagePreprocessSpec(image_size=16)), ExampleViT)
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    host = PluginHost(strict=False)
    assert "no such lib" in host.plugins["broken"].errors[0]
    assert host.plugins["broken"].version == "0.1"
    assert host.vision("good-vit").plugin == "good"
    with pytest.raises(PluginError, match="broken.*no such lib"):
        PluginHost(strict=True)
    monkeypatch.setenv("OVIS_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError):
        PluginHost()


def test_a_hook_that_raises_or_registers_garbage_is_isolated(example_plugin):
    class Raising:
        @hookimpl
        def register_vision_backbones(self, register):
            raise RuntimeError("boom in register")

    class Garbage:
        @hookimpl
        def register_vision_backbones(self, register):
            register({"name": "not-a-spec"}, object)

    class Misnamed:
        @hookimpl
        def register_vision_backbone(self, register):  # typo: no such hook
            pass

    host = PluginHost(entry_points=False, extra_plugins=[
        ("example", example_plugin), ("raising", Raising()), ("garbage", Garbage()), ("misnamed", Misnamed()),
    ])
    assert "boom in register" in host.plugins["raising"].errors[0]
    assert "expects a VisionSpec" in host.plugins["garbage"].errors[0]
    assert "register_vision_backbone" in host.plugins["misnamed"].errors[0]
    assert host.vision("example-vit").plugin == "example"
    assert not host.plugins["example"].errors


def test_duplicate_names_are_refused_naming_both_plugins(example_plugin):
    from ovis_example_plugin.vit import ExampleViT

    class Copycat:
        @hookimpl
        def register_vision_backbones(self, register):
            register(_spec("other-name", aliases=["example"]), ExampleViT)

    host = PluginHost(entry_points=False, extra_plugins=[("example", example_plugin), ("copycat", Copycat())])
    (error,) = host.plugins["copycat"].errors
    assert "'example'" in error and "plugin 'example'" in error and "'copycat'" in error
    assert host.vision("example").plugin == "example"
    with pytest.raises(PluginError, match="already registered by plugin 'example'"):
        PluginHost(entry_points=False, strict=True,
                   extra_plugins=[("example", example_plugin), ("copycat", Copycat())])


def test_unknown_names_suggest_close_matches_and_their_plugin(example_plugin):
    host = PluginHost(entry_points=False, extra_plugins=[("example", example_plugin)])
    with pytest.raises(UnknownNameError) as err:
        host.vision("exampel-vit")
    message = str(err.value)
    assert "Did you mean 'example-vit' (plugin example)" in message
    assert "Available: example-vit" in message
    with pytest.raises(UnknownNameError, match="unknown chat format 'example-plian'.*example-plain"):
        host.chat_format("example-plian")


def test_a_registry_preset_whose_plugin_is_missing_names_that_plugin(tmp_path, monkeypatch):
    (tmp_path / "vision").mkdir()
    spec = _spec("far-vit").model_copy(update={"plugin": "ovis-plugin-far", "builder": "far-builder"})
    (tmp_path / "vision" / "far-vit.yaml").write_text(json.dumps(spec.model_dump(mode="json")))
    monkeypatch.setenv("OVIS_REGISTRY_PATH", str(tmp_path))
    host = PluginHost(entry_points=False)
    with pytest.raises(UnknownNameError, match="provided by plugin ovis-plugin-far, which is not installed"):
        host.vision("far-vit")


def test_list_with_wildcards_matches_names_and_aliases(example_plugin):
    host = PluginHost(entry_points=False, extra_plugins=[("example", example_plugin)])
    assert [e.spec.name for e in host.list("vision", "*vit")] == ["example-vit"]
    assert [e.spec.name for e in host.list("vision", "EXAMPLE")] == ["example-vit"]  # alias, any case
    assert host.list("vision", "*siglip*") == []
    assert host.list("llm", "*") == []


def test_remove_plugin_forgets_what_it_registered(example_plugin):
    host = PluginHost(entry_points=False, extra_plugins=[("example", example_plugin)])
    host.remove_plugin("example")
    assert "example" not in host.plugins and host.list("vision") == [] and host.chat_formats() == {}


@pytest.mark.slow
def test_the_example_package_installs_and_is_discovered(tmp_path):
    """pip-install the example third-party plugin into a fresh target and find it via entry points."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(EXAMPLE_PLUGIN)],
        check=True, capture_output=True, text=True,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-m", "ovis.cli", "plugins", "--json"], check=True, capture_output=True,
        text=True, env=env, cwd=REPO,
    )
    plugins = {p["name"]: p for p in json.loads(out.stdout)["plugins"]}
    assert plugins["example"]["registered"]["vision"] == ["example-vit"]
    assert plugins["example"]["errors"] == []
    listed = subprocess.run(
        [sys.executable, "-m", "ovis.cli", "list", "vit", "example*", "--json"], check=True,
        capture_output=True, text=True, env=env, cwd=REPO,
    )
    assert [r["name"] for r in json.loads(listed.stdout)] == ["example-vit"]


def test_plugins_command_reports_errors(monkeypatch, capsys, tmp_path):
    from ovis.cli import main
    from ovis.plugin_host import get_host, reset_host

    _fake_dist(tmp_path, "broken-plugin", "broken", "broken_plugin_mod2", "raise ImportError('missing dep')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reset_host()
    try:
        assert main(["plugins", "--json"]) == 0
        plugins = {p["name"]: p for p in json.loads(capsys.readouterr().out)["plugins"]}
        assert "missing dep" in plugins["broken"]["errors"][0]
    finally:
        reset_host()
        get_host()




def test_a_preset_with_a_wrong_field_is_skipped_and_reported_by_file_and_field(tmp_path, monkeypatch, capsys):
    from ovis.cli import main
    from ovis.interfaces.presets import PRESET_ERRORS
    from ovis.plugin_host import reset_host

    (tmp_path / "vision").mkdir()
    good = _spec("fine-vit").model_dump(mode="json")
    bad = {**_spec("bad-vit").model_dump(mode="json"), "hidden_sise": 3}
    (tmp_path / "vision" / "fine-vit.yaml").write_text(json.dumps(good))
    (tmp_path / "vision" / "bad-vit.yaml").write_text(json.dumps(bad))
    monkeypatch.setenv("OVIS_REGISTRY_PATH", str(tmp_path))
    PRESET_ERRORS.clear()
    reset_host()
    try:
        assert main(["plugins", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        (path, message), = report["preset_errors"].items()
        assert path.endswith("bad-vit.yaml") and "field 'hidden_sise'" in message and "not permitted" in message
        monkeypatch.setenv("OVIS_STRICT_PLUGINS", "1")
        reset_host()
        with pytest.raises(PluginError, match="bad-vit.yaml: field 'hidden_sise'"):
            from ovis.plugin_host import get_host

            get_host()
    finally:
        PRESET_ERRORS.clear()
        monkeypatch.delenv("OVIS_REGISTRY_PATH")
        monkeypatch.delenv("OVIS_STRICT_PLUGINS")
        reset_host()
