"""Bad model specs fail early and in one line; a plugin's bad spec costs only that spec.

The plugin tests install real distributions (a dist-info with entry points) on PYTHONPATH
and run pathbench in a subprocess, as a user's environment would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pathbench.errors import PathbenchError
from pathbench.extractors import ModelSpec, load_extractor

ROOT = Path(__file__).resolve().parents[1]

ZOO_MODULE = '''
from pathbench.extractors import ModelSpec


def _tiny(name, **changes):
    fields = dict(name=name, family="timm", arch="vit_tiny_patch16_224",
                  build_kwargs={"img_size": 224, "depth": 1, "num_classes": 0}, embed_dim=192,
                  random_init=True, licence="MIT")
    fields.update(changes)
    return ModelSpec(**fields)


def specs():
    return [
        _tiny("acme-good"),
        _tiny("acme-typo", family="timmm"),
        _tiny("h0-mini"),
        _tiny("acme-wide", embed_dim=384),
        _tiny("acme-kwarg", build_kwargs={"img_size": 224, "depth": 1, "num_classes": 0, "depht": 2}),
        "acme-not-a-spec",
        _tiny("acme-last"),
    ]


def rival():
    return _tiny("acme-good", description="another company's model of the same name")
'''


def _install(root: Path, dist: str, entry_points: str) -> None:
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[pathbench.extractors]\n{entry_points}\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    (root / "acme_zoo.py").write_text(ZOO_MODULE)
    _install(root, "acme-zoo", "acme = acme_zoo:specs")
    _install(root, "rival-zoo", "rival = acme_zoo:rival")
    return root


def _python(site: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"},
    )


def _pathbench(site: Path, *args: str) -> subprocess.CompletedProcess:
    return _python(site, f"import sys; from pathbench.cli import main; sys.exit(main({list(args)!r}))")


def _lines(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def test_a_bad_spec_is_reported_once_and_the_plugins_other_models_are_kept(site):
    result = _pathbench(site, "models", "acme*", "--json")
    assert result.returncode == 0, result.stderr
    names = [row["name"] for row in json.loads(result.stdout)]
    assert names == ["acme-good", "acme-kwarg", "acme-last", "acme-wide"]
    (typo,) = _lines(result.stderr, "acme-typo")
    assert typo.startswith("warning: pathbench plugin 'acme' from acme-zoo")
    assert "family must be one of timm, hf, got 'timmm'" in typo and "skipped" in typo
    (odd,) = _lines(result.stderr, "among its models")
    assert "str" in odd and "expected a ModelSpec or an Extractor" in odd


def test_a_name_clash_says_so_and_with_what(site):
    result = _pathbench(site, "models", "h0-mini", "--json")
    assert [row["origin"] for row in json.loads(result.stdout)] == ["pathbench"]
    (builtin,) = _lines(result.stderr, "'h0-mini'")
    assert "name clash" in builtin and "built-in" in builtin and "expected a ModelSpec" not in builtin
    (rival,) = _lines(result.stderr, "'acme-good' has the name of a model from")
    assert "name clash" in rival and ("from rival-zoo" in rival and "acme-zoo" in rival)


def test_plugin_warnings_appear_once_however_often_plugins_are_asked(site):
    result = _python(site, """
        import warnings
        warnings.simplefilter("always")
        from pathbench.extractors import get_spec, list_specs, load_plugins
        list_specs()
        for name in ("acme-nope", "acme-nothing"):
            try:
                get_spec(name)  # an unknown name asks the plugins again
            except KeyError as exc:
                print(type(exc).__name__)
        load_plugins(force=True)
    """)
    assert result.stdout.split() == ["ModelNotFoundError", "ModelNotFoundError"], result.stderr
    for needle in ("acme-typo", "'h0-mini'", "among its models"):
        assert len(_lines(result.stderr, needle)) == 1, result.stderr


@pytest.mark.slow
def test_a_wrong_embed_dim_fails_when_loaded_in_one_line(site, tmp_path):
    result = _pathbench(site, "extract", "--model", "acme-wide", "--data", str(_tiles(tmp_path)),
                        "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--no-progress")
    (error,) = _error_lines(result)
    assert "'acme-wide' (from acme-zoo) declares embed_dim=384" in error and "width 192" in error
    assert not list((tmp_path / "cache").glob("features/*/*/shard-*"))


@pytest.mark.slow
def test_an_unknown_build_keyword_fails_in_one_line_naming_it(site, tmp_path):
    result = _pathbench(site, "extract", "--model", "acme-kwarg", "--data", str(_tiles(tmp_path)),
                        "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--no-progress")
    (error,) = _error_lines(result)
    assert "'acme-kwarg'" in error and "vit_tiny_patch16_224" in error and "no build keyword 'depht'" in error


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The lines of a failed command that are not the plugin warnings of this site."""
    assert result.returncode == 2, result.stderr
    return [line for line in result.stderr.splitlines() if not line.startswith("warning: pathbench plugin")]


def _tiles(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "tiles"
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (224, 224), (200, 120, 160)).save(folder / "a.png")
    return folder


TINY_HF = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
           "image_size": 32, "patch_size": 16}


@pytest.mark.slow
def test_a_transformers_spec_is_checked_against_its_config():
    good = ModelSpec(name="tiny-hf", family="hf", arch="ViTConfig", build_kwargs=TINY_HF, embed_dim=32,
                     crop=32, resize=32, random_init=True)
    assert load_extractor(good, device="cpu").embed(torch.zeros(1, 32, 32, 3, dtype=torch.uint8)).shape == (1, 32)
    with pytest.raises(PathbenchError, match=r"'tiny-hf'.*embed_dim=48.*width 32"):
        load_extractor(good.replace(embed_dim=48), device="cpu")
    with pytest.raises(PathbenchError, match=r"'tiny-hf'.*ViTConfig takes no build keyword 'hiden_size'"):
        load_extractor(good.replace(build_kwargs={**TINY_HF, "hiden_size": 48}), device="cpu")


def test_a_wrong_register_count_fails_when_loaded(tiny_extractor):
    spec = tiny_extractor.spec.replace(name="vit-tiny-miscounted", num_prefix_tokens=1)
    with pytest.raises(PathbenchError, match=r"num_prefix_tokens=1.*puts 3 class and register tokens"):
        load_extractor(spec, device="cpu")


def test_a_ready_extractor_misstating_its_width_stops_at_the_first_batch(tiny_extractor, tmp_path):
    from pathbench.data.base import ArrayTileDataset
    from pathbench.extractors import Extractor
    from pathbench.features import extract_features

    lying = Extractor(tiny_extractor.spec.replace(embed_dim=256), tiny_extractor.model, "sha256:x", device="cpu")
    tiles = np.zeros((4, 224, 224, 3), dtype=np.uint8)
    with pytest.raises(PathbenchError, match=r"width 192 with pooling cls.*embed_dim=256"):
        extract_features(lying, ArrayTileDataset(tiles), cache_dir=tmp_path, batch_size=2, shard_size=2,
                         progress=False)
    assert not list(tmp_path.glob("features/*/*/shard-*"))
