"""ament_python glue: what `colcon build` installs besides the Python packages.

Package metadata, dependencies and the `agent` console script live in pyproject.toml;
this file only adds the ROS 2 layout (docs/ros2.md, Packaging):

- share/ament_index/resource_index/packages/agent (the package marker),
- share/agent/package.xml, share/agent/launch/*.launch.py, share/agent/config/*.yaml,
- lib/agent/finetune_node and lib/agent/sim_driver, the node executables.

The node executables are written only when scripts are installed into ``.../lib/agent``
(setup.cfg asks for that and colcon passes it on), so a pip install puts no extra
commands on PATH; ``colcon build --symlink-install`` runs ``setup.py develop`` instead,
which writes them there too.
"""
from __future__ import annotations

import os
from glob import glob
from pathlib import Path

from setuptools import setup
from setuptools.command.develop import develop
from setuptools.command.install_scripts import install_scripts
from setuptools.dist import Distribution

PACKAGE = "agent"
NODES = {"finetune_node": "finetune_node", "sim_driver": "sim_driver"}  # executable -> agent.nodes function
HERE = Path(__file__).resolve().parent


def _rel(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, HERE) for p in glob(str(HERE / pattern)))


def write_node_executables(target: Path) -> list[str]:
    """One executable per ROS 2 node in ``target`` when it is the ament layout's lib/agent."""
    if target.parts[-2:] != ("lib", PACKAGE):
        return []
    import sys
    # the interpreter that runs the build, as setuptools' own console scripts do
    python = os.path.normpath(sys.executable)
    written = []
    target.mkdir(parents=True, exist_ok=True)
    for executable, function in NODES.items():
        path = target / executable
        path.write_text(
            f"#!{python}\n"
            f'"""ROS 2 node {executable} of package {PACKAGE} (see agent/nodes.py)."""\n'
            "import sys\n"
            f"from agent.nodes import {function}\n"
            f"sys.exit({function}())\n"
        )
        path.chmod(0o755)
        written.append(str(path))
    return written


class install_node_executables(install_scripts):
    """Also write one executable per ROS 2 node when installing into the ament layout."""

    def run(self) -> None:
        super().run()
        if not self.dry_run:
            self.outfiles.extend(write_node_executables(Path(self.install_dir)))


class develop_node_executables(develop):
    """``colcon build --symlink-install``: develop skips install_scripts, so write the nodes here."""

    def run(self) -> None:
        super().run()
        if not self.dry_run and not self.uninstall:
            write_node_executables(Path(self.script_dir))


# colcon build --symlink-install runs `setup.py develop` in its build directory, where it links
# setup.py, setup.cfg, the packages and the data files, but not pyproject.toml (the metadata,
# dependencies and the agent script) nor the files it names
if Path.cwd().resolve() != HERE:
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        link = Path.cwd() / name
        if (HERE / name).exists() and not link.exists():
            link.symlink_to(HERE / name)


class ColconReadableDistribution(Distribution):
    """colcon reads the distribution's attributes back with ``ast.literal_eval``; the
    ``SpecifierSet`` that setuptools makes of pyproject's requires-python is not a
    literal, so it is kept as the plain string older setuptools used."""

    def parse_config_files(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().parse_config_files(*args, **kwargs)
        for holder in (self, self.metadata):
            if getattr(holder, "python_requires", None) is not None:
                holder.python_requires = str(holder.python_requires)


setup(
    distclass=ColconReadableDistribution,
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", _rel("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", _rel("config/*.yaml")),
    ],
    cmdclass={"install_scripts": install_node_executables, "develop": develop_node_executables},
)
