"""The wheel ships every package: a subpackage missing from pyproject.toml imports in a checkout but not installed."""

from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def test_every_package_directory_is_listed_in_pyproject():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapped = {v: k for k, v in config["package-dir"].items()}
    found = set()
    for init in REPO.glob("**/__init__.py"):
        rel = init.parent.relative_to(REPO)
        if rel.parts[0] in ("tests", "bench", "build", ".git") or any(p.startswith(".") for p in rel.parts):
            continue
        found.add(".".join([mapped.get(rel.parts[0], rel.parts[0]), *rel.parts[1:]]))
    assert found - listed == set(), f"packages missing from pyproject.toml: {sorted(found - listed)}"
