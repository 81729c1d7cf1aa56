"""Without network: the hub is probed once, cached weights are used, and missing ones fail in one line.

The suite runs with HF_HUB_OFFLINE=1 (conftest); these tests unset it and point the hub's
endpoint at a local address, which is unreachable (a closed port) or a small local server.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import constants

from pathbench.extractors import get_spec, load_extractor
from pathbench.extractors import weights as weights_mod

ROOT = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """Network allowed (HF_HUB_OFFLINE unset) but the hub unreachable, and an empty hub cache."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    weights_mod._probe.cache_clear()
    yield tmp_path / "hub"
    weights_mod._probe.cache_clear()


@pytest.mark.slow
def test_a_gated_model_without_network_fails_at_once_in_one_line(tmp_path):
    from PIL import Image

    (tmp_path / "tiles").mkdir()
    Image.new("RGB", (224, 224), (200, 120, 160)).save(tmp_path / "tiles" / "a.png")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    code = "import sys; from pathbench.cli import main; sys.exit(main(sys.argv[1:]))"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", code, "extract", "--model", "h0-mini", "--data", str(tmp_path / "tiles"),
         "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: h0-mini: the Hugging Face hub (http://127.0.0.1:") and "cannot be reached" in line
    assert "HF_HUB_OFFLINE=1" in line and "--weights PATH" in line
    assert elapsed < 20, f"{elapsed:.0f} s: huggingface_hub's retries (about 25 s) were not avoided"


def test_an_unreachable_hub_is_probed_once_and_the_error_says_what_to_do(no_hub):
    spec = get_spec("h0-mini")
    for _ in range(2):
        with pytest.raises(weights_mod.WeightsAccessError) as info:
            weights_mod.download_weights(spec)
    assert weights_mod._probe.cache_info().misses == 1
    message = str(info.value)
    assert "\n" not in message and "cannot be reached" in message
    assert "HF_HUB_OFFLINE=1" in message and "--weights PATH" in message and "hf download bioptimus/H0-mini" in message


def test_cached_weights_are_used_when_the_hub_is_unreachable(no_hub, tiny_extractor):
    import torch

    spec = tiny_extractor.spec.replace(name="acme-cached", hub_id="acme/tiny", random_init=False,
                                       weights_files=("model.safetensors", "pytorch_model.bin"))
    commit = "0" * 40
    repo = no_hub / "models--acme--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    # Only the second candidate is cached: the cache-only search must try every candidate.
    torch.save(tiny_extractor.model.backbone.state_dict(), snapshot / "pytorch_model.bin")
    extractor = load_extractor(spec, device="cpu")
    tiles = torch.zeros(1, 224, 224, 3, dtype=torch.uint8)
    torch.testing.assert_close(extractor.embed(tiles), tiny_extractor.embed(tiles))
    assert weights_mod._probe.cache_info().misses == 1


def test_offline_mode_skips_the_probe_and_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    weights_mod._probe.cache_clear()
    with pytest.raises(weights_mod.WeightsAccessError, match=r"HF_HUB_OFFLINE is set.*--weights PATH"):
        weights_mod.download_weights(get_spec("h0-mini"))
    assert weights_mod._probe.cache_info().misses == 0


def test_a_hub_that_answers_is_reachable_whatever_the_status(monkeypatch):
    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 (the handler API)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    try:
        assert weights_mod._probe(f"http://127.0.0.1:{server.server_address[1]}") is None
        assert "refused" in weights_mod._probe(f"http://127.0.0.1:{_closed_port()}").lower()
    finally:
        server.shutdown()
        weights_mod._probe.cache_clear()
