"""Plugin discovery and isolation, duplicate policy, lookups and 'did you mean'."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from ovis.interfaces import ImagePreprocessSpec, VisionSpec, hookimpl, iter_presets
from ovis.plugin_host import PluginError, PluginHost, UnknownNameError

from .conftest import EXAMPLE_PLUGIN, REPO


def _spec(name: str, **extra) -> VisionSpec:
    return VisionSpec(
        name=name, family="toy", builder="example-vit", source="other", hidden_size=8, image_size=16,
        patch_size=8, num_layers=1, num_heads=1, tiny=True,
        preprocess=ImagePreprocessSpec(image_size=16), **extra,
    )


def _fake_dist(tmp_path, dist: str, entry: str, module_name: str, module_source: str, attr: str = ""):
    """A minimal installed distribution on sys.path: dist-info with an ovis.plugins entry point
    naming ``module_name`` (or ``module_name:attr``)."""
    info = tmp_path / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    target = f"{module_name}:{attr}" if attr else module_name
    (info / "entry_points.txt").write_text(f"[ovis.plugins]\n{entry} = {target}\n")
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
    assert [e.spec.name for e in host.list("llm", "*-lm")] == ["example-llm"]  # by its alias


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
    assert plugins["example"]["registered"] == {
        "vision": ["example-vit"], "llm": ["example-llm"], "chat_format": ["example-plain", "example-chat"],
    }
    assert (plugins["example"]["distribution"], plugins["example"]["version"]) == ("ovis-plugin-example", "0.1.0")
    assert plugins["example"]["errors"] == []  # its specs' `plugin` field names this distribution
    listed = subprocess.run(
        [sys.executable, "-m", "ovis.cli", "list", "vit", "example*", "--json"], check=True,
        capture_output=True, text=True, env=env, cwd=REPO,
    )
    assert [(r["name"], r["plugin"], r["distribution"]) for r in json.loads(listed.stdout)] == [
        ("example-vit", "example", "ovis-plugin-example")
    ]


def test_plugins_command_reports_distribution_version_and_errors(monkeypatch, capsys, tmp_path):
    from ovis.cli import main
    from ovis.plugin_host import get_host, reset_host

    _fake_dist(tmp_path, "broken-plugin", "broken", "broken_plugin_mod2", "raise ImportError('missing dep')\n")
    _fake_dist(tmp_path, "acme-plugin-chat", "acme-chat", "acme_chat_mod", "")
    monkeypatch.syspath_prepend(str(tmp_path))
    reset_host()
    try:
        assert main(["plugins", "--json"]) == 0
        plugins = {p["name"]: p for p in json.loads(capsys.readouterr().out)["plugins"]}
        assert "missing dep" in plugins["broken"]["errors"][0]
        assert (plugins["acme-chat"]["distribution"], plugins["acme-chat"]["version"]) == ("acme-plugin-chat", "0.1")
        assert plugins["ovis-plugin-qwen"]["distribution"] == "ovis-plugin-qwen"
        assert main(["plugins"]) == 0
        table = capsys.readouterr().out
        assert "distribution" in table and "acme-plugin-chat" in table and "missing dep" in table
    finally:
        reset_host()
        get_host()


def test_a_preset_with_a_wrong_field_is_skipped_and_reported_by_file_and_field(tmp_path, monkeypatch, capsys):
    from ovis.cli import main
    from ovis.plugin_host import get_host, reset_host

    (tmp_path / "vision").mkdir()
    good = _spec("fine-vit").model_dump(mode="json")
    bad = {**_spec("bad-vit").model_dump(mode="json"), "hidden_sise": 3}
    (tmp_path / "vision" / "fine-vit.yaml").write_text(json.dumps(good))
    (tmp_path / "vision" / "bad-vit.yaml").write_text(json.dumps(bad))
    monkeypatch.setenv("OVIS_REGISTRY_PATH", str(tmp_path))
    reset_host()
    try:
        assert main(["plugins", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        (path, message), = report["preset_errors"].items()
        assert path.endswith("bad-vit.yaml") and "field 'hidden_sise'" in message and "not permitted" in message
        monkeypatch.setenv("OVIS_STRICT_PLUGINS", "1")
        reset_host()
        with pytest.raises(PluginError, match="bad-vit.yaml: field 'hidden_sise'"):
            get_host()
    finally:
        monkeypatch.delenv("OVIS_REGISTRY_PATH")
        monkeypatch.delenv("OVIS_STRICT_PLUGINS")
        reset_host()


class _PresetReader:
    """A plugin that registers the example-vit presets of the registry, as first-party plugins do."""

    @hookimpl
    def register_vision_backbones(self, register):
        from ovis_example_plugin.vit import ExampleViT

        for spec in iter_presets("vision", builders={"example-vit"}):
            register(spec, ExampleViT)


def test_preset_errors_belong_to_the_host_and_go_with_reset(tmp_path, monkeypatch, example_plugin):
    from ovis.plugin_host import get_host, reset_host

    (tmp_path / "vision").mkdir()
    bad = tmp_path / "vision" / "bad-vit.yaml"
    bad.write_text(json.dumps({**_spec("bad-vit").model_dump(mode="json"), "hidden_sise": 3}))
    monkeypatch.setenv("OVIS_REGISTRY_PATH", str(tmp_path))
    first = PluginHost(entry_points=False, extra_plugins=[("reader", _PresetReader())])
    assert list(first.preset_errors) == [str(bad)]

    bad.unlink()
    assert PluginHost(entry_points=False, extra_plugins=[("reader", _PresetReader())]).preset_errors == {}
    assert list(first.preset_errors) == [str(bad)]  # each host keeps its own report
    reset_host()
    try:
        assert get_host().preset_errors == {}
    finally:
        monkeypatch.delenv("OVIS_REGISTRY_PATH")
        reset_host()


def test_an_invalid_preset_read_outside_a_host_is_warned_about(tmp_path, monkeypatch):
    (tmp_path / "vision").mkdir()
    (tmp_path / "vision" / "bad-vit.yaml").write_text("name: [unclosed")
    monkeypatch.setenv("OVIS_REGISTRY_PATH", str(tmp_path))
    with pytest.warns(UserWarning, match="bad-vit.yaml: not valid YAML"):
        names = [spec.name for spec in iter_presets("vision")]
    assert "clip-tiny" in names


def test_an_unhashable_object_as_plugin_is_a_clear_error(tmp_path, monkeypatch):
    @hookimpl
    def register_chat_formats(register):
        raise AssertionError("never called")

    host = PluginHost(entry_points=False)
    with pytest.raises(PluginError, match=r"'ns'.*SimpleNamespace.*register a module, or an instance of a class"):
        host.add_plugin("ns", SimpleNamespace(register_chat_formats=register_chat_formats))
    assert "ns" not in host.plugins

    # An entry point may name such an object too: that plugin's error, the others unaffected.
    _fake_dist(tmp_path, "ns-plugin", "ns", "ns_plugin_mod", """
        from types import SimpleNamespace
        PLUGIN = SimpleNamespace()
    """, attr="PLUGIN")
    monkeypatch.syspath_prepend(str(tmp_path))
    (error,) = PluginHost(strict=False).plugins["ns"].errors
    assert "SimpleNamespace object cannot be a plugin" in error
    with pytest.raises(PluginError, match="plugin 'ns': a SimpleNamespace object cannot be a plugin"):
        PluginHost(strict=True)


_REGISTERS_WITH_PLUGIN_FIELD = """
    from ovis.interfaces import hookimpl, VisionSpec, ImagePreprocessSpec
    from ovis_example_plugin.vit import ExampleViT

    @hookimpl
    def register_vision_backbones(register):
        for name, plugin in (("own-vit", "Acme_Plugin.Vision"), ("stolen-vit", "ovis-plugin-other")):
            register(VisionSpec(name=name, family="toy", builder="example-vit", source="other", plugin=plugin,
                hidden_size=8, image_size=16, patch_size=8, num_layers=1, num_heads=1,
                preprocess=ImagePreprocessSpec(image_size=16)), ExampleViT)
"""


def test_plugins_show_their_distribution_and_a_foreign_plugin_field_is_refused(
    tmp_path, monkeypatch, example_plugin
):
    _fake_dist(tmp_path, "acme-plugin-vision", "acme", "acme_plugin_mod", _REGISTERS_WITH_PLUGIN_FIELD)
    monkeypatch.syspath_prepend(str(tmp_path))
    host = PluginHost(strict=False)
    info = host.plugins["acme"]
    assert (info.name, info.distribution, info.version) == ("acme", "acme-plugin-vision", "0.1")
    assert host.vision("own-vit").plugin == "acme"  # names compared as pip does
    (error,) = info.errors
    assert "'stolen-vit' says plugin 'ovis-plugin-other', but distribution 'acme-plugin-vision'" in error
    assert info.registered["vision"] == ["own-vit"]
    with pytest.raises(PluginError, match="stolen-vit"):
        PluginHost(strict=True)
    # In-process plugins are checked when they say which distribution they are.
    checked = PluginHost(entry_points=False)
    checked.add_plugin("example", example_plugin, distribution="not-the-example")
    assert "says plugin 'ovis-plugin-example'" in checked.plugins["example"].errors[0]


def test_the_plugin_host_and_the_plugins_command_import_neither_torch_nor_transformers():
    """Listing starts fast: these modules (and what they import) leave torch and transformers alone.

    ``ovis`` and ``ovis.cli`` are stood in for by bare packages, so that only these modules count."""
    code = textwrap.dedent(f"""
        import sys, types
        for name, folder in (("ovis", {str(REPO / "ovis")!r}), ("ovis.cli", {str(REPO / "ovis" / "cli")!r})):
            package = types.ModuleType(name)
            package.__path__ = [folder]
            sys.modules[name] = package
        import ovis.interfaces, ovis.plugin_host, ovis.cli.plugins_cmd
        print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_a_builder_registered_by_import_path_is_imported_on_first_use(example_plugin):
    spec = PluginHost(entry_points=False, extra_plugins=[("example", example_plugin)]).vision("example-vit").spec

    class ByPath:
        @hookimpl
        def register_vision_backbones(self, register):
            register(spec.model_copy(update={"name": "lazy-vit", "aliases": [], "plugin": None}),
                     "ovis_example_plugin.vit:ExampleViT")
            register(spec.model_copy(update={"name": "missing-vit", "aliases": [], "plugin": None}),
                     "no_such_module_anywhere:Nothing")

    host = PluginHost(entry_points=False, extra_plugins=[("by-path", ByPath())])
    assert [e.spec.name for e in host.entries("vision")] == ["lazy-vit", "missing-vit"]
    assert host.vision("lazy-vit").factory.__name__ == "ExampleViT"
    with pytest.raises(PluginError, match="by-path.*missing-vit.*no_such_module_anywhere:Nothing.*cannot be imported"):
        _ = host.vision("missing-vit").factory


def test_an_unreadable_preset_is_skipped_named_and_the_presets_after_it_still_listed(tmp_path, monkeypatch, capsys):
    # Bad entries sort before the good one: a file that is not UTF-8, a directory named *.yaml and
    # a file that cannot be read must each be skipped alone, not end the plugin's loop.
    from ovis.cli import main
    from ovis.plugin_host import get_host, reset_host

    good = get_host().vision("clip-tiny").spec.model_copy(update={"name": "zz-good-vit", "aliases": []})
    (tmp_path / "vision").mkdir()
    (tmp_path / "vision" / "aa-latin1.yaml").write_bytes(b"name: aa-latin1\nfamily: caf\xe9\n")
    (tmp_path / "vision" / "ab-folder.yaml").mkdir()
    (tmp_path / "vision" / "ac-dangling.yaml").symlink_to(tmp_path / "nowhere.yaml")
    (tmp_path / "vision" / "zz-good-vit.yaml").write_text(json.dumps(good.model_dump(mode="json")))
    monkeypatch.setenv("OVIS_REGISTRY_PATH", str(tmp_path))
    reset_host()
    try:
        errors = get_host().preset_errors
        assert set(errors) == {str(tmp_path / "vision" / n) for n in ("aa-latin1.yaml", "ab-folder.yaml",
                                                                      "ac-dangling.yaml")}
        assert "not UTF-8 text (byte 0xe9" in errors[str(tmp_path / "vision" / "aa-latin1.yaml")]
        assert "a directory, not a preset file" in errors[str(tmp_path / "vision" / "ab-folder.yaml")]
        assert "cannot be read" in errors[str(tmp_path / "vision" / "ac-dangling.yaml")]
        capsys.readouterr()
        assert main(["list", "vit", "*vit*"]) == 0
        out, err = capsys.readouterr()
        assert "zz-good-vit" in out
        assert "3 vision preset file(s) skipped as invalid" in err
        assert "aa-latin1.yaml: not UTF-8" in err and "ab-folder.yaml: a directory" in err
        assert main(["list", "vit", "zz-*", "--json"]) == 0
        out, err = capsys.readouterr()
        assert [row["name"] for row in json.loads(out)] == ["zz-good-vit"] and "skipped as invalid" in err
        assert main(["list", "llm"]) == 0
        assert "skipped" not in capsys.readouterr().err  # only the kind listed
    finally:
        monkeypatch.delenv("OVIS_REGISTRY_PATH")
        reset_host()
        get_host()


def test_weights_written_dot_slash_are_the_folder_beside_the_preset(tmp_path):
    from ovis.interfaces.presets import PresetError, load_preset_file

    (tmp_path / "vision" / "my-vit-weights").mkdir(parents=True)
    path = tmp_path / "vision" / "my-vit.yaml"
    path.write_text(json.dumps(_spec("my-vit", weights="./my-vit-weights").model_dump(mode="json")))
    assert load_preset_file(path, "vision").weights == str(tmp_path / "vision" / "my-vit-weights")
    path.write_text(json.dumps(_spec("my-vit", weights="org/my-vit").model_dump(mode="json")))
    assert load_preset_file(path, "vision").weights == "org/my-vit"  # a hub id stays as it is
    path.write_text(json.dumps(_spec("my-vit", weights="./gone").model_dump(mode="json")))
    with pytest.raises(PresetError, match=r"my-vit.yaml: weights './gone': no directory .*vision/gone"):
        load_preset_file(path, "vision")


# -- whose bug an unexpected error is -----------------------------------------------------------
def _broken_vit():
    from ovis.interfaces import VisionBackbone

    class BrokenViT(VisionBackbone):
        """A backbone whose constructor its own ``from_spec`` calls wrongly (a plugin bug)."""

        def __init__(self, spec, extra) -> None:  # pragma: no cover - never reached
            super().__init__(spec)

        @classmethod
        def from_spec(cls, spec, *, pretrained=True):
            return cls(spec)  # TypeError: 'extra' missing

        forward = blocks = set_gradient_checkpointing = None

    return BrokenViT


class _BrokenPlugin:
    @hookimpl
    def register_vision_backbones(self, register):
        spec = VisionSpec(
            name="broken-vit", family="broken", builder="broken", plugin="broken-plugin", source="other", tiny=True,
            hidden_size=32, image_size=32, patch_size=8, num_layers=1, num_heads=2,
            preprocess=ImagePreprocessSpec(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, resize="squash"),
        )
        register(spec, _broken_vit())


def test_an_error_raised_in_a_plugins_code_is_reported_as_that_plugins_bug(register_plugin, capsys):
    from ovis.cli import main
    from ovis.plugin_host import get_host

    register_plugin("broken", _BrokenPlugin())
    assert main(["compose", "--vit", "broken-vit", "--llm", "qwen-toy", "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "TypeError" in err and "missing 1 required positional argument: 'extra'" in err
    assert "raised by plugin 'broken' (added in-process) in its own code" in err
    assert f"{__file__}:" in err and "this is a bug in ovis" not in err
    # ovis's own code raising: ovis's bug, even with the plugin installed
    from ovis.model.configuration_ovis import merged_tokens

    with pytest.raises(TypeError) as raised:
        merged_tokens("sixteen", 2)
    assert get_host().blame(raised.value) is None


def test_a_model_whose_plugin_is_not_installed_names_the_package_to_install(tmp_path):
    """config.json records the distribution of the encoder (and the LLM, whose chat format it is)."""
    import ovis
    from ovis.processing import OvisProcessor

    model, processor = ovis.compose(vit="clip-toy", llm="qwen-toy", visual_vocab_size=32)
    directory = ovis.save(model, processor, tmp_path / "m")
    config = json.loads((directory / "config.json").read_text())
    config["vision_spec"].update(builder="strange-vit", plugin="ovis-plugin-strangevit")
    config["llm_spec"]["plugin"] = "ovis-plugin-strangechat"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnknownNameError, match=r"kind 'strange-vit'; it is provided by ovis-plugin-strangevit "
                                               r"\(not installed: pip install ovis-plugin-strangevit\)"):
        ovis.load(directory)
    preprocessor = json.loads((directory / "preprocessor_config.json").read_text())
    preprocessor["chat_format"] = "stranger"
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    with pytest.raises(UnknownNameError, match=r"unknown chat format 'stranger'\. The model was saved with it from "
                                               r"ovis-plugin-strangechat \(not installed: pip install ovis-plugin-"):
        OvisProcessor.from_pretrained(directory)


def test_an_unknown_name_says_why_a_preset_of_that_name_did_not_register(tmp_path, monkeypatch):
    """A preset file for an installed plugin that does not read presets, and one skipped as invalid."""
    sys.path.insert(0, str(EXAMPLE_PLUGIN))
    try:
        import ovis_example_plugin.plugin as module
    finally:
        sys.path.remove(str(EXAMPLE_PLUGIN))
    (tmp_path / "vision").mkdir()
    mine = {**_spec("user-vit").model_dump(mode="json"), "plugin": "ovis-plugin-example", "builder": "example-vit"}
    (tmp_path / "vision" / "user-vit.yaml").write_text(json.dumps(mine))
    typo = {**_spec("typo-vit").model_dump(mode="json"), "hidden_sise": 3}
    (tmp_path / "vision" / "typo-vit.yaml").write_text(json.dumps(typo))
    monkeypatch.setenv("OVIS_REGISTRY_PATH", str(tmp_path))
    host = PluginHost(entry_points=False)
    host.add_plugin("example", module, distribution="ovis-plugin-example")  # loads, reads no preset file
    with pytest.raises(UnknownNameError, match=r"defines it for plugin ovis-plugin-example, which is installed and "
                                               r"loaded but did not register it.*iter_presets"):
        host.vision("user-vit")
    with pytest.raises(UnknownNameError, match=r"typo-vit\.yaml was skipped as invalid: field 'hidden_sise'"):
        host.vision("typo-vit")
