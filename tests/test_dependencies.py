"""The dependency sets pip installs: one FAISS distribution per install, every import declared."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
FAISS_FLAVOURS = {"cpu": "faiss-cpu", "gpu": "faiss-gpu-cu12"}


def _pip(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}, cwd=ROOT)


def _dry_run_report(*args: str, timeout: float = 180) -> dict:
    result = _pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-", *args, timeout=timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def project_requirements() -> list[Requirement]:
    """The project's Requires-Dist as pip builds it, without resolving anything (``--no-deps``)."""
    # without build isolation the installed setuptools builds the metadata: no network needed
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    report = _dry_run_report("--no-deps", *isolation, ".[cpu]")
    (project,) = report["install"]
    assert project["metadata"]["name"] == "pathbench"
    return [Requirement(line) for line in project["metadata"]["requires_dist"]]


def _direct_requirements(requirements: list[Requirement], extras: tuple[str, ...]) -> list[Requirement]:
    """The requirements pip installs for ``pathbench[extras]`` (markers evaluated for each extra)."""
    environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
    return [r for r in requirements if r.marker is None or any(r.marker.evaluate(env) for env in environments)]


def _faiss_names(requirements) -> set[str]:
    return {canonicalize_name(r.name) for r in requirements if canonicalize_name(r.name).startswith("faiss")}


@pytest.mark.parametrize("extras", [("cpu",), ("gpu",), ("cpu", "dev"), ("gpu", "dev")])
def test_each_faiss_extra_installs_exactly_one_faiss_distribution(project_requirements, extras):
    flavour = next(e for e in extras if e in FAISS_FLAVOURS)
    assert _faiss_names(_direct_requirements(project_requirements, extras)) == {FAISS_FLAVOURS[flavour]}


def test_the_base_install_leaves_the_faiss_flavour_to_an_extra(project_requirements):
    assert _faiss_names(_direct_requirements(project_requirements, ())) == set()


def test_the_makefile_installs_the_cpu_flavour():
    install_lines = [line for line in (ROOT / "Makefile").read_text().splitlines() if "pip install" in line and "-e" in line]
    assert install_lines and all('".[cpu,dev]"' in line for line in install_lines)


def _imported_top_level_modules(folder: Path) -> set[str]:
    modules = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module.split(".")[0])
    return modules


def test_every_third_party_import_of_the_packages_is_declared(project_requirements):
    from importlib.metadata import packages_distributions

    provided_by = packages_distributions()
    declared = {canonicalize_name(r.name) for r in project_requirements}
    optional = {"faiss"}  # imported lazily, with an error naming the extra when missing
    imported = _imported_top_level_modules(ROOT / "pathbench") | _imported_top_level_modules(ROOT / "distill")
    undeclared = []
    for module in sorted(imported - set(sys.stdlib_module_names) - {"pathbench", "distill"} - optional):
        distributions = {canonicalize_name(d) for d in provided_by.get(module, [])}
        if distributions and not distributions & declared:
            undeclared.append((module, sorted(distributions)))
    assert undeclared == []


@pytest.mark.slow
def test_the_extras_resolve_on_pypi_to_one_faiss_distribution_each(project_requirements):
    probe = _pip("index", "versions", "faiss-cpu", timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"PyPI is unreachable, the resolution cannot be checked: {probe.stderr.strip()[-300:]}")
    sets = {flavour: _direct_requirements(project_requirements, (flavour,)) for flavour in FAISS_FLAVOURS}
    union = {canonicalize_name(r.name): r for requirements in sets.values() for r in requirements}
    # each requirement resolved to the distribution pip would install here, with markers already
    # applied (no transitive dependencies: none depends on faiss, and torch's tree takes a minute)
    wanted = [f"{r.name}{'[' + ','.join(sorted(r.extras)) + ']' if r.extras else ''}{r.specifier}"
              for r in union.values()]
    report = _dry_run_report("--no-deps", *wanted)
    resolved = {canonicalize_name(item["metadata"]["name"]) for item in report["install"]}
    assert resolved == set(union)
    for flavour, requirements in sets.items():
        installed = resolved & {canonicalize_name(r.name) for r in requirements}
        assert {name for name in installed if name.startswith("faiss")} == {FAISS_FLAVOURS[flavour]}
