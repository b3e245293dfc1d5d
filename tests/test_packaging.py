import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_built_wheel_ships_methods_and_discovers_them(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("vlpbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "methods/albef.py" in names and "vlpbench/zoo/vision.py" in names
    # import from the wheel alone (pure Python imports from a zip), away from the source tree
    code = "import methods, vlpbench.registry as r; print(methods.__file__); print(r.available_methods())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(wheel)}).stdout.splitlines()
    assert out[0].startswith(str(wheel)) and out[1] == "['albef']"


def test_every_subcommand_has_help():
    for sub in ([], ["run"], ["eval"], ["data"], ["list"]):
        result = subprocess.run([sys.executable, "-m", "vlpbench.cli", *sub, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "usage: vlpbench" in result.stdout
