import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_built_wheel_ships_methods_under_vlpbench_and_discovers_them(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("vlpbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "vlpbench/methods/albef.py" in names and "vlpbench/zoo/vision.py" in names
    assert not any(name.startswith("methods/") for name in names)  # no generic top-level package
    # import from the wheel alone (pure Python imports from a zip), away from the source tree
    code = ("import vlpbench.methods as m, vlpbench.registry as r; print(m.__file__); "
            "print(r.available_methods())")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(wheel)}).stdout.splitlines()
    shipped = sorted(p.stem for p in (ROOT / "methods").glob("*.py") if p.stem != "__init__")  # one file per method
    assert out[0].startswith(str(wheel)) and out[1] == str(shipped)


def test_help_and_argument_errors_answer_without_loading_torch():
    # each command imports its own machinery, so the CLI's help costs ~0.2 s instead of ~6 s
    code = ("import sys\nfrom vlpbench.cli import main\ntry:\n    main(['run', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint(sorted(m for m in ('torch', 'timm', 'transformers', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]"


def test_every_subcommand_has_help():
    for sub in ([], ["run"], ["eval"], ["data"], ["list"]):
        result = subprocess.run([sys.executable, "-m", "vlpbench.cli", *sub, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "usage: vlpbench" in result.stdout


def make_dry_run(target, env):
    return subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True, check=True,
                          env=env).stdout


def test_make_commands_install_into_a_project_venv_unless_one_is_active(tmp_path):
    """PEP 668: a system Python refuses `pip install`, so `make run` / `make test` use a venv."""
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    venv = tmp_path / "venv"
    out = make_dry_run("test", {**env, "VENV": str(venv)})
    assert f"-m venv {venv}" in out
    assert f'{venv}/bin/python -m pip install -e ".[test]"' in out and f"{venv}/bin/python -m pytest -q" in out
    assert f"{venv}/bin/vlpbench run experiments/quickstart.yaml" in make_dry_run("run", {**env, "VENV": str(venv)})
    active = make_dry_run("test", {**env, "VIRTUAL_ENV": "/opt/active"})
    assert "-m venv" not in active and "/opt/active/bin/python -m pip install" in active
