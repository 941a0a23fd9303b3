"""YAML errors told on one line with the line and column (never pyyaml's ``"<unicode string>"``):
one home for the training configs and the preset files; and a loader that refuses a key given twice
in one mapping (pyyaml keeps the last one without a word)."""

from __future__ import annotations

import yaml


def line_column(text: str, position: int) -> tuple[int, int]:
    """1-based line and column of character ``position`` of ``text``."""
    before = text[:position]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1


def yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """A YAML error on one line: what is wrong and where (``text``: what was parsed), never pyyaml's
    ``"<unicode string>"`` stand-in for the source."""
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow: no mark, a position
        line, column = line_column(text, exc.position)
        char = exc.character
        shown = f"U+{char:04X}" if isinstance(char, int) else f"byte {char!r}"
        return f"character {shown} is not allowed in YAML at line {line}, column {column}"
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        context = getattr(exc, "context", None)
        if context and problem.startswith("but "):  # "but found another document": say what was expected
            problem = f"{context} {problem}"
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).replace('in "<unicode string>", ', "").split())


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises on a key written twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class says so
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"key {key!r} is given twice (first at line {first.line + 1}): the second would replace the first",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str):
    """``yaml.safe_load``, but a key given twice in one mapping is a ``yaml.YAMLError``."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # (a SafeLoader subclass: no arbitrary objects)
