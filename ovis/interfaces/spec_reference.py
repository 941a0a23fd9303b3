"""Renders the plugin spec reference (``docs/plugin-spec-reference.md``) from the code itself.

Every field of the pydantic specs a plugin fills in, with its type, default and description, the
chat format's attributes and the hooks come from the models' ``Field(description=...)`` and
docstrings, so the document cannot drift from the code (``tests/test_spec_docs.py`` checks it)::

    python -m ovis.interfaces.spec_reference                                      # print it
    python -m ovis.interfaces.spec_reference --write docs/plugin-spec-reference.md
    python -m ovis.interfaces.spec_reference --check docs/plugin-spec-reference.md
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ovis.generated_docs import reference_main
from ovis.interfaces import hookspecs
from ovis.interfaces.chat import ChatFormat, Message, Segment
from ovis.interfaces.specs import ImagePreprocessSpec, LLMSpec, VisionSpec

MODELS: tuple[type[BaseModel], ...] = (VisionSpec, ImagePreprocessSpec, LLMSpec, Message, Segment)
HOOKS = (hookspecs.register_vision_backbones, hookspecs.register_llms, hookspecs.register_chat_formats)
REGENERATE = "python -m ovis.interfaces.spec_reference --write docs/plugin-spec-reference.md"

HEADER = f"""<!-- Generated from ovis/interfaces/ by `{REGENERATE}`.
Edit the Field descriptions and docstrings there, not this file: tests/test_spec_docs.py fails
when the two differ. -->

# Plugin spec reference

Every field a plugin fills in, generated from the pydantic models in `ovis.interfaces`. The guide
([writing-a-plugin.md](writing-a-plugin.md)) says how the pieces fit together. The specs
(`VisionSpec`, `ImagePreprocessSpec`, `LLMSpec`) refuse unknown fields, so a misspelt field fails at
registration naming it, and are frozen once built; their fields are also what a preset file
(`registry/<kind>/<name>.yaml`) holds.
"""

_TYPE_NAMES = {"integer": "int", "number": "float", "string": "str", "boolean": "bool", "null": "null"}


def _markdown(docstring: str | None) -> str:
    """A docstring with its reStructuredText roles and literals turned into Markdown code spans."""
    text = inspect.cleandoc(docstring or "")
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _type(prop: dict[str, Any]) -> str:
    """A JSON-schema property as a short type: `int > 0`, `"pad" or "crop"`, `str or null`..."""
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return " or ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    if "anyOf" in prop:
        return " or ".join(_type(p) for p in prop["anyOf"])
    kind = prop.get("type")
    if kind == "array":
        if "prefixItems" in prop:
            return "[" + ", ".join(_type(p) for p in prop["prefixItems"]) + "]"
        return f"list of {_type(prop.get('items', {}))}"
    if kind == "object":
        return "mapping"
    text = _TYPE_NAMES.get(kind, "any")
    if "exclusiveMinimum" in prop:
        text += f" > {prop['exclusiveMinimum']}"
    if "pattern" in prop:
        text += f" matching `{prop['pattern']}`"
    return text


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    return f"`{json.dumps(field.get_default(call_default_factory=True))}`"


def model_section(model: type[BaseModel]) -> str:
    """A heading, the model's docstring and a table of its fields."""
    properties = model.model_json_schema()["properties"]
    lines = [
        f"## {model.__name__}", "", _markdown(model.__doc__), "",
        "| field | type | default | description |", "| --- | --- | --- | --- |",
    ]
    for name, field in model.model_fields.items():
        if not field.description:
            raise ValueError(f"{model.__name__}.{name} has no Field(description=...)")
        lines.append(f"| `{name}` | {_type(properties[name])} | {_default(field)} | {_cell(field.description)} |")
    return "\n".join(lines) + "\n"


def chat_format_section() -> str:
    segments = ChatFormat.segments
    signature = str(inspect.signature(segments)).replace("'", "")  # annotations are strings here
    return "\n".join([
        "## ChatFormat", "", _markdown(ChatFormat.__doc__), "",
        f"`segments{signature}`: {_cell(_markdown(segments.__doc__))}", "",
    ])


def hooks_section() -> str:
    lines = ["## Hooks", "", _markdown(hookspecs.__doc__).split("\n\n")[0], ""]
    for hook in HOOKS:
        lines.append(f"- `{hook.__name__}(register)`: {_cell(_markdown(hook.__doc__))}")
    return "\n".join(lines) + "\n"


def render() -> str:
    """The whole reference, as committed in ``docs/plugin-spec-reference.md``."""
    sections = [HEADER, *(model_section(m) for m in MODELS), chat_format_section(), hooks_section()]
    return "\n".join(sections)


def main(argv: Sequence[str] | None = None) -> int:
    return reference_main(argv, prog="python -m ovis.interfaces.spec_reference", what="plugin spec reference",
                          render=render, regenerate=REGENERATE)


if __name__ == "__main__":
    raise SystemExit(main())
