"""The package as a user gets it from ``pip install``: a wheel built from this tree,
installed on its own, run from outside the repository without the optional packages.

The wheel must carry its data (the MJCF models, the reference returns that normalized
scores and new stores need), and a command that needs an optional package must say in
one sentence which extra installs it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = ("h5py", "pyarrow", "matplotlib", "minari")

# Imports the installed copy first and hides the optional packages, then runs the CLI.
RUNNER = """\
import sys
site = sys.argv[1]
sys.path.insert(0, site)
for name in {optional!r}:
    sys.modules[name] = None  # `import name` now raises ImportError, as when it is not installed
import agent, sims
for module in (agent, sims):
    if not module.__file__.startswith(site):
        sys.exit(f"imported {{module.__name__}} from {{module.__file__}}, not from the installed copy in {{site}}")
from agent.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _source_tree(dest: Path) -> Path:
    """The files git would ship (tracked, and new ones it does not ignore), copied out so
    that building leaves no build/ or egg-info in the working tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (REPO / rel).is_file() and not rel.startswith(("tests/", "bench/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to list the files a wheel is built from")
    root = tmp_path_factory.mktemp("install")
    src = _source_tree(root / "src")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(src)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheel = next((root / "dist").glob("agent-*.whl"))
    site = root / "site"
    done = subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--target", str(site), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runner = root / "run_agent.py"
    runner.write_text(RUNNER.format(optional=OPTIONAL))
    work = root / "cwd"  # outside the repository, so nothing is found from the current directory
    work.mkdir()
    return {"wheel": wheel, "build_log": built.stdout + built.stderr, "site": site, "runner": runner, "cwd": work}


def run_installed(installed, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AGENT_DEBUG")}
    env.update(MUJOCO_GL=env.get("MUJOCO_GL", "egl"), OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1")
    return subprocess.run([sys.executable, str(installed["runner"]), str(installed["site"]), *args],
                          cwd=installed["cwd"], env=env, capture_output=True, text=True, timeout=300)


def test_wheel_builds_without_warnings_and_carries_its_data(installed):
    assert "Warning" not in installed["build_log"], installed["build_log"][-3000:]
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    wanted = {"sims/reference_returns.json", "sims/arm/arm.xml", "sims/arm/reach.xml", "sims/arm/push.xml",
              "sims/arm/pick_place.xml", "robot/config/cyclonedds.xml"}
    assert wanted <= names, f"the wheel lacks {sorted(wanted - names)}"
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(installed["wheel"]).read(metadata).decode()
    assert "License-Expression: Apache-2.0" in text
    assert "Requires-Dist: matplotlib" in text.split("Provides-Extra:")[0]  # core: `agent report` draws with it


def test_installed_eval_reports_a_normalized_score(installed):
    proc = run_installed(installed, "eval", "--policy", "random", "--env", "sims/ArmReach-v0", "--episodes", "1", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["env_id"] == "sims/ArmReach-v0"
    assert isinstance(result["normalized_score"], float), result


def test_installed_collect_records_the_reference_returns(installed):
    proc = run_installed(installed, "collect", "--env", "sims/ArmReach-v0", "--policy", "random", "--episodes", "1",
                         "--out", "reach.zarr", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    attrs = json.loads((installed["cwd"] / "reach.zarr" / "zarr.json").read_text())["attributes"]
    assert attrs["reference_returns"] is not None and len(attrs["reference_returns"]) == 2, attrs


def test_installed_import_without_h5py_names_the_extra_in_one_sentence(installed):
    (installed["cwd"] / "x.hdf5").write_bytes(b"not read: h5py is missing")
    proc = run_installed(installed, "import", "--from", "d4rl", "x.hdf5", "--out", "y")
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    err = proc.stderr.strip()
    assert "Traceback" not in err, err[-3000:]
    assert len(err.splitlines()) == 1 and err.endswith("."), err
    assert "agent[io]" in err, err
    assert not (installed["cwd"] / "y").exists()
