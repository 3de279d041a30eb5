"""
Every package of the project is named in pyproject.toml's
``[tool.setuptools] packages``: a folder left out there installs from a
checkout (editable) but is missing from the wheel, and whatever imports it
(``airflowrpc call`` imports ``txairflowrpc.client``) fails only once
installed.  The wheel itself is built in tests/integration/test_packaging.py.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_package_is_in_the_wheels_list() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts)
             for p in (REPO / "txairflowrpc").rglob("__init__.py")}
    assert "txairflowrpc.client" in found
    assert found - listed == set()
