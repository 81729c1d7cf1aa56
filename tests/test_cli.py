"""The command line: thin, scriptable, and one clear line per user error."""

from __future__ import annotations

import numpy as np
import pytest

from pathbench.cli import main


def test_extract_embeds_an_image_folder_and_exports_it(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(tmp_path / f"t{i}.png")
    out = tmp_path / "export"
    status = main(["extract", "--model", "vit-tiny-random", "--data", str(tmp_path), "--out", str(out),
                   "--device", "cpu", "--batch-size", "2", "--no-progress", "--pooling", "cls+mean"])
    assert status == 0
    embeddings = np.load(out / "embeddings.npy")
    assert embeddings.shape == (3, 384) and embeddings.dtype == np.float32
    assert (out / "item_ids.txt").read_text().split() == ["t0.png", "t1.png", "t2.png"]
    assert "3 embeddings of dim 384" in capsys.readouterr().out


def test_extract_on_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["extract", "--model", "vit-tiny-random", "--data", str(tmp_path / "none")]) == 2
    assert "does not exist; expected a folder of image files" in capsys.readouterr().err


def test_evaluate_names_the_known_benchmarks_for_an_unknown_one(capsys):
    assert main(["evaluate", "--bench", "camelyon", "--model", "vit-tiny-random"]) == 2
    assert "unknown benchmark 'camelyon': expected one of eva, hest, plism" in capsys.readouterr().err


def test_evaluate_without_bench_says_what_is_needed(capsys):
    assert main(["evaluate", "--model", "vit-tiny-random"]) == 2
    assert "needs --bench" in capsys.readouterr().err


@pytest.mark.parametrize("bench", ["plism", "hest", "eva"])
def test_each_benchmark_lists_its_own_flags_in_help(bench, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--bench", bench, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--model" in text and "--out" in text and "--precision" in text
