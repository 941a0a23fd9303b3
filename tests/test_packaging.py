"""pyproject.toml lists packages by hand (ovis_registry lives in registry/): keep the list complete."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_ovis_subpackage_is_listed_for_installation():
    # A regex, not tomllib: the project supports Python 3.10, which has no tomllib.
    block = re.search(r"^packages = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.S | re.M).group(1)
    listed = set(re.findall(r'"([\w.]+)"', block))
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "ovis").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    missing = sorted(found - listed)
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml, or a wheel will lack them"
    assert "ovis_registry" in listed
