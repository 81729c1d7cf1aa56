"""Listing models must not import torch, timm or transformers (they take seconds to import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).parents[1]
HEAVY = ("torch", "timm", "transformers")

# Any import of a heavy library fails, so pathbench code that needs one cannot hide behind
# the library being importable; plugins that need one fail to load and are reported.
BLOCKER = f"""
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError("blocked import of " + name)
sys.meta_path.insert(0, _Block())
"""

LIST_SPECS = """
import json, sys, warnings
warnings.simplefilter("ignore")
import pathbench.extractors.registry as registry
from pathbench.extractors import get_spec, list_specs, parameter_count
specs = list_specs()
print(json.dumps({
    "names": [s.name for s in specs],
    "params": {s.name: parameter_count(s) for s in specs if s.origin == "pathbench"},
    "h0_mini": get_spec("h0-mini").params,
    "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "transformers")),
}))
"""


def _run(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env=env, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_listing_specs_and_their_parameter_counts_needs_no_torch_timm_or_transformers():
    report = _run(BLOCKER + LIST_SPECS)
    assert {"h-optimus-0", "h0-mini", "uni", "virchow2", "hibou-l", "kaiko-vitb8"} <= set(report["names"])
    assert report["h0_mini"] == 85_739_520
    assert all(isinstance(n, int) and n > 0 for n in report["params"].values())
    assert report["heavy"] == []


def test_the_torch_backed_names_still_import_on_first_use():
    report = _run("""
        import json, sys
        import pathbench.extractors as extractors
        before = "torch" in sys.modules
        extractors.load_extractor  # noqa: B018
        print(json.dumps({"before": before, "after": "torch" in sys.modules,
                          "names": sorted(set(extractors.__all__) - set(dir(extractors)))}))
    """)
    # The distill plugin is not loaded by a bare import, so torch comes only with load_extractor.
    assert report == {"before": False, "after": True, "names": []}


def test_listing_specs_with_every_installed_plugin_imports_no_torch():
    assert _run(LIST_SPECS)["heavy"] == []


def test_the_help_and_models_commands_import_no_torch():
    code = ("import sys, contextlib, io; from pathbench.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['models'])\n"
            "    try:\n"
            "        main(['--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "print(sorted(m for m in ('torch', 'timm', 'transformers', 'pandas') if m in sys.modules))")
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
