"""The package as users get it: layering, a wheel's contents, the console script."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["jitter_models", "collectives", "launch", "experiments"]  # imports point down


BLOCK_TORCH = """
import sys
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, BlockTorch())
"""


def test_jitter_models_works_without_torch():
    code = BLOCK_TORCH + (
        "import jitter_models as jm\n"
        "d = jm.parse('lognormal(median=50us, sigma=0.8)')\n"
        "s = jm.parse_schedule('exponential(20us); temporal=ar1(rho=0.5)')\n"
        "print(repr(jm.expected_max(d, 8)), s.delays(0, 0, 0, 1, 2, 2).sum().hex())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    import jitter_models as jm  # same results as with torch importable

    d = jm.parse("lognormal(median=50us, sigma=0.8)")
    s = jm.parse_schedule("exponential(20us); temporal=ar1(rho=0.5)")
    assert out.stdout.split() == [repr(jm.expected_max(d, 8)),
                                  s.delays(0, 0, 0, 1, 2, 2).sum().hex()]


def test_imports_point_down_the_layers():
    upward = []
    for pkg in LAYERS:
        for f in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module
                    and node.level == 0 else [])
                for name in names:
                    top = name.split(".")[0]
                    if top in LAYERS and LAYERS.index(top) > LAYERS.index(pkg):
                        upward.append(f"{f.relative_to(ROOT)} imports {name}")
    assert upward == []


def test_wheel_ships_all_packages_presets_and_the_console_script(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("jitterlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg in LAYERS:
        assert f"{pkg}/__init__.py" in names
    assert "experiments/presets/jitter-zoo.toml" in names
    assert not any(n.startswith("tests/") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "jitterlab = experiments.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
