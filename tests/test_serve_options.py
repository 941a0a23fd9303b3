"""``serve(ServeOptions(...))``, the library's entry point, without argparse; the CLI's mapping of
its flags onto it; bad options and a bad model directory as one-line ``OvisError``s; and that
importing the serving package, or building the CLI, loads no web framework."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from ovis.cli import main
from ovis.errors import InputFileError, OvisError
from ovis.serve import ServeOptions, serve
from ovis.serve.errors import GenerationSettingsError, RequestError, ServeOptionsError
from ovis.serve.generation import GenerationParams


def test_serve_takes_options_and_serves_the_api(chatty_model_dir, monkeypatch, capsys):
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    from ovis.serve.server import ServerThread

    seen = {}

    def run_briefly(app, *, host, port, log_level, **settings):  # stands in for the blocking uvicorn.run
        seen.update(host=host, port=port, settings=settings)
        with ServerThread(app, host=host) as server:
            for path in ("/health", "/v1/models"):
                with urllib.request.urlopen(server.url + path, timeout=30) as response:
                    seen[path] = json.loads(response.read())

    monkeypatch.setattr(uvicorn, "run", run_briefly)
    options = ServeOptions(model_path=chatty_model_dir, port=8123, ui=False, max_batch_size=2,
                           limits={"max_images": 2})
    assert serve(options) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    # uvicorn's access log prints query strings; the structured one replaces it
    assert seen["settings"]["access_log"] is False and seen["settings"]["limit_concurrency"] > 64
    assert seen["/health"]["model"] == chatty_model_dir.name  # the directory name by default
    assert [m["id"] for m in seen["/v1/models"]["data"]] == [chatty_model_dir.name]
    out = capsys.readouterr().out
    assert "API http://127.0.0.1:8123/v1" in out and "web UI" not in out


@pytest.mark.parametrize("options, named", [
    ({"port": 70000}, "port"),
    ({"port": 0}, "port"),
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"batch_window_ms": -1}, "batch_window_ms"),
    ({"limits": {"max_images": -1}}, "limits.max_images"),
    ({"limits": {"max_imagez": 3}}, "limits.max_imagez"),
    ({"model_name": ""}, "model_name"),
    ({"ui": False, "api": False}, "nothing is left to serve"),
    ({"workers": 4}, "workers"),
])
def test_bad_server_options_are_ovis_errors_naming_the_field(options, named):
    with pytest.raises(ServeOptionsError) as refused:
        ServeOptions(model_path="m", **options)
    assert isinstance(refused.value, OvisError) and isinstance(refused.value, ValueError)
    assert str(refused.value).startswith("invalid server options: ") and named in str(refused.value)


def test_a_bad_model_directory_or_dtype_is_an_ovis_error(tmp_path, chatty_model_dir):
    with pytest.raises(InputFileError, match="is not a directory"):
        serve(ServeOptions(model_path=tmp_path / "missing", ui=False))
    with pytest.raises(InputFileError, match="has no config.json"):
        serve(ServeOptions(model_path=tmp_path, ui=False))
    with pytest.raises(OvisError, match="dtype must be one of auto, float32, bfloat16, float16; got 'float8'"):
        serve(ServeOptions(model_path=chatty_model_dir, dtype="float8"))


def test_the_cli_maps_its_flags_onto_serve_options(monkeypatch):
    given = []
    monkeypatch.setattr("ovis.serve.server.serve", lambda options: given.append(options) or 0)
    assert main(["serve", "--model_path", "runs/m", "--host", "0.0.0.0", "--port", "8001", "--no-ui",
                 "--model-name", "mine", "--device", "cpu", "--dtype", "float32", "--max-batch-size", "4",
                 "--batch-window-ms", "5", "--max-images", "3", "--max-new-tokens", "64",
                 "--flagging-dir", "flags"]) == 0
    assert given == [ServeOptions(
        model_path="runs/m", host="0.0.0.0", port=8001, ui=False, api=True, model_name="mine", device="cpu",
        dtype="float32", max_batch_size=4, batch_window_ms=5.0, limits={"max_images": 3, "max_new_tokens": 64},
        flagging_dir="flags",
    )]
    assert main(["serve", "--model", "runs/m"]) == 0
    assert given[-1] == ServeOptions(model_path="runs/m")  # flags not given keep the library's defaults


@pytest.mark.parametrize("argv, message", [
    (["--no-ui", "--no-api"], "nothing is left to serve"),
    (["--port", "70000"], "port"),
    (["--max-images", "-1"], "limits.max_images"),
])
def test_bad_serve_flags_print_one_line(tmp_path, capsys, argv, message):
    assert main(["serve", "--model", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid server options") and message in err and "Traceback" not in err


def test_bad_generation_settings_are_ovis_errors():
    with pytest.raises(GenerationSettingsError, match="temperature only apply when do_sample=True") as refused:
        GenerationParams.from_settings(temperature=0.5)
    assert isinstance(refused.value, OvisError) and isinstance(refused.value, ValueError)
    assert issubclass(RequestError, OvisError) and issubclass(RequestError, ValueError)


def test_importing_serving_and_building_the_cli_load_no_web_framework():
    code = (
        "import sys\n"
        "from ovis.cli import build_parser\n"
        "build_parser().parse_args(['serve', '--model', 'm'])\n"
        "cli = sorted(m for m in sys.modules if m.startswith('ovis.serve'))\n"
        "import ovis.serve, ovis.serve.server\n"
        "from ovis.serve import ServeOptions\n"
        "ServeOptions(model_path='m', port=8000)\n"  # options are checked before torch loads
        "heavy = sorted(m for m in ('gradio', 'fastapi', 'starlette', 'uvicorn', 'torch') if m in sys.modules)\n"
        "print(cli, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] []"
