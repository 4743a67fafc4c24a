"""constraints.txt pins the tested set: it must keep up with pyproject.toml's dependencies."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for number, line in enumerate((REPO / "constraints.txt").read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version.strip(), f"constraints.txt:{number}: {line!r} is not name==version"
        found[canonicalize_name(name)] = version.strip()
    return found


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = [item for group in project.get("optional-dependencies", {}).values() for item in group]
    return [Requirement(text) for text in [*project["dependencies"], *extras]]


def pin_problems(requirements: list[Requirement], pinned: dict[str, str]) -> list[str]:
    problems = []
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name not in pinned:
            problems.append(f"{requirement} is in pyproject.toml but not pinned in constraints.txt")
        elif not requirement.specifier.contains(pinned[name], prereleases=True):
            problems.append(f"constraints.txt pins {name}=={pinned[name]}, outside pyproject.toml's {requirement}")
    return problems


def test_every_dependency_is_pinned_inside_its_declared_range():
    problems = pin_problems(declared(), pins())
    assert not problems, "\n".join(problems) + "\nregenerate constraints.txt (see its header)"


def test_a_drifted_or_missing_pin_is_reported():
    """The check itself: a pyproject that moved on from the pins fails it, naming the package."""
    pinned = {**pins(), "transformers": "4.57.1"}
    del pinned["celery"]
    problems = pin_problems(declared(), pinned)
    assert any(p.startswith("constraints.txt pins transformers==4.57.1, outside") for p in problems), problems
    assert any(p.startswith("celery[redis]") and "not pinned" in p for p in problems), problems


def test_torch_pin_is_the_cpu_build_the_readme_installs_first():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"pip install torch=={pins()['torch']}" in readme


def test_readme_ci_and_dockerfile_install_with_the_constraints():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme.count("-c constraints.txt") >= 2  # both opening commands
    assert "-c constraints.txt" in (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "constraints.txt" in (REPO / "deploy" / "Dockerfile").read_text(encoding="utf-8")
