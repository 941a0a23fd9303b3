"""Shared fixtures: a throwaway-plugin registrar, the example third-party plugin, tiny models."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_PLUGIN = REPO / "examples" / "ovis-plugin-example"


@pytest.fixture
def register_plugin(ovis_plugin):
    """Register throwaway plugin objects on the process-wide host; removed after the test (the
    ``ovis_plugin`` fixture that ovis.testing gives plugin authors)."""
    return ovis_plugin


@pytest.fixture
def example_plugin(register_plugin):
    """The example third-party plugin (examples/ovis-plugin-example), registered in-process."""
    sys.path.insert(0, str(EXAMPLE_PLUGIN))
    try:
        import ovis_example_plugin.plugin as module

        from ovis.plugin_host import get_host

        # (a host rebuilt while this directory was on sys.path found it already, through the
        # egg-info a `pip install` of the example leaves there)
        if "example" not in get_host().plugins:
            register_plugin("example", module)
        yield module
    finally:
        sys.path.remove(str(EXAMPLE_PLUGIN))


@pytest.fixture
def tiny_llm():
    """A 2-layer Qwen2 causal LM with a 512-token vocabulary (no tokenizer: model-level tests)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    config = Qwen2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, vocab_size=512, tie_word_embeddings=False, pad_token_id=0,
    )
    return AutoModelForCausalLM.from_config(config)


@pytest.fixture
def tiny_ovis(example_plugin, tiny_llm):
    """An OvisForCausalLM from the example ViT (16 patches, width 32) and ``tiny_llm``, V = 256."""
    import torch

    from ovis.model import OvisConfig, OvisForCausalLM
    from ovis.plugin_host import get_host

    torch.manual_seed(0)
    entry = get_host().vision("example-vit")
    backbone = entry.factory.from_spec(entry.spec, pretrained=False)
    config = OvisConfig(
        llm_config=tiny_llm.config.to_dict(),
        vision_spec=entry.spec.model_dump(mode="json"),
        visual_vocab_size=256,
        chat_format="example-plain",
    )
    return OvisForCausalLM(config, llm=tiny_llm, backbone=backbone).eval()


@pytest.fixture(scope="session")
def toy_tokenizer():
    """A byte-level BPE trained in milliseconds, with pad/eos tokens (processor-level tests)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["User: what colour is the square?", "Assistant: the square is red.",
              "how many circles are there? there are three circles."] * 20
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


@pytest.fixture
def toy_processor(tiny_ovis, toy_tokenizer, example_plugin):
    from ovis.plugin_host import get_host
    from ovis.processing import OvisProcessor

    return OvisProcessor(
        tokenizer=toy_tokenizer,
        image_processor=tiny_ovis.backbone.image_processor(),
        chat_format=get_host().chat_format("example-plain"),
        num_image_tokens=tiny_ovis.num_image_tokens,
        max_length=256,
    )


@pytest.fixture(scope="session")
def chatty_model_dir(tmp_path_factory):
    """The embedded default pair (clip-toy + qwen-toy, V = 256) saved to disk, with the LLM's
    matrices redrawn at a larger scale so greedy replies vary with the prompt and the image
    (a freshly initialised toy LLM answers every prompt with the same token). Serving tests."""
    import torch

    from ovis.composer import compose, save

    torch.manual_seed(0)
    model, processor = compose(vit="clip-toy", llm="qwen-toy", visual_vocab_size=256)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.llm.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.15, generator=generator)
    return save(model, processor, tmp_path_factory.mktemp("serve") / "chatty")


@pytest.fixture(scope="session")
def chatty_runner(chatty_model_dir):
    from ovis.serve.runner import OvisRunner, RunnerArguments

    # float32, not "auto": on a CPU with native bf16, auto follows a matmul timing probe that picks bf16
    # under load, and in bf16 a left-padded batch rounds differently from one prompt alone.
    return OvisRunner(RunnerArguments(model_path=str(chatty_model_dir), max_new_tokens=8, dtype="float32"))


@contextlib.contextmanager
def _served(model_dir, *, runner: dict | None = None, build: dict | None = None, **service_options):
    """``(service, server)``: ``model_dir`` behind a batching Service (``service_options``) and an HTTP
    server on a free port (``build``: ``build_app`` options); both closed on exit."""
    from ovis.serve.runner import OvisRunner, RunnerArguments
    from ovis.serve.server import ServerThread, build_app
    from ovis.serve.service import Service

    service = Service.wrap(OvisRunner(RunnerArguments(model_path=str(model_dir), **(runner or {}))),
                           **service_options)
    try:
        with ServerThread(build_app(service, **(build or {"ui": False}))) as server:
            yield service, server
    finally:
        service.close()


@pytest.fixture(scope="session")
def served():
    """The context manager that serves a model directory (see ``_served``), for module fixtures."""
    return _served


@pytest.fixture
def one_thread():
    """The CPU here is shared: one thread avoids OpenMP stalls and keeps timings steady."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def repo_script():
    """Imports a script of the repository that is not part of a package (``benchmarks/*.py``,
    ``docs/make_screenshot.py``) from its path under the repository root, registered in
    ``sys.modules`` under its file name (dataclasses look their module up there)."""
    import importlib.util

    def load(relative: str):
        path = REPO / relative
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return module

    return load
