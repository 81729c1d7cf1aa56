"""The plugin contract, tested with a real distribution on sys.path (a dist-info, no mocks)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN_MODULE = '''
from pathbench.extractors import ModelSpec


def specs():
    return [
        ModelSpec(
            name="acme-vit",
            family="timm",
            arch="vit_tiny_patch16_224",
            build_kwargs={"img_size": 224, "depth": 1, "num_classes": 0},
            embed_dim=192,
            random_init=True,
            licence="MIT",
            description="Acme's tiny ViT",
        )
    ]
'''


def _install_fake_distribution(root: Path, broken: bool) -> None:
    (root / "acme_pathbench.py").write_text(PLUGIN_MODULE)
    if broken:
        (root / "acme_broken.py").write_text("raise ImportError('libacme.so not found')\n")
    info = root / "acme_pathbench-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-pathbench\nVersion: 1.0\n")
    entry_points = "[pathbench.extractors]\nacme = acme_pathbench:specs\n"
    if broken:
        entry_points += "broken = acme_broken:specs\n"
    (info / "entry_points.txt").write_text(entry_points)


ROOT = Path(__file__).resolve().parents[1]


def _pathbench(root: Path, *args: str) -> subprocess.CompletedProcess:
    env_path = f"{root}{__import__('os').pathsep}{ROOT}"  # this checkout's pathbench, not an installed one
    code = "import sys; from pathbench.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": env_path},
        timeout=300,
    )


@pytest.fixture(scope="module")
def plugin_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    _install_fake_distribution(root, broken=True)
    return root


def test_installed_plugin_appears_in_models_json_with_its_origin(plugin_root):
    result = _pathbench(plugin_root, "models", "acme*", "--json", "--params")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["name"] for row in rows] == ["acme-vit"]
    assert rows[0]["origin"] == "acme-pathbench"
    assert rows[0]["dim"] == 192 and rows[0]["params"] > 0 and rows[0]["licence"] == "MIT"


def test_a_broken_plugin_is_one_warning_line_and_the_rest_still_works(plugin_root):
    result = _pathbench(plugin_root, "models", "h0-mini", "--json")
    assert result.returncode == 0
    assert [row["name"] for row in json.loads(result.stdout)] == ["h0-mini"]
    warnings = [line for line in result.stderr.splitlines() if "broken" in line]
    assert len(warnings) == 1
    assert "plugin 'broken' from acme-pathbench failed to load" in warnings[0]
    assert "libacme.so not found" in warnings[0]


def test_a_plugin_model_loads_and_embeds_like_a_builtin(plugin_root):
    code = textwrap.dedent(
        """
        import numpy as np, torch
        from pathbench.extractors import load_extractor
        extractor = load_extractor("acme-vit", device="cpu")
        out = extractor.embed(torch.zeros(2, 224, 224, 3, dtype=torch.uint8))
        print(tuple(out.shape), extractor.spec.origin)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": f"{plugin_root}{__import__('os').pathsep}{ROOT}"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(2, 192) acme-pathbench"


def test_docs_plugin_example_is_the_tested_contract():
    docs = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    assert "[project.entry-points.\"pathbench.extractors\"]" in docs
    assert "def specs()" in docs
