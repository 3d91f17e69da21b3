"""The repository as the ament_python package `agent` (docs/ros2.md, Packaging).

`colcon build` (colcon-core and colcon-ros from PyPI, no ROS installation) must produce
the layout `ros2 launch agent finetune.launch.py` and `ros2 run agent ...` rely on; the
launch file, the parameter file and the node executables must agree with each other
and with the `agent` command line. The launch file imports launch/launch_ros, which are
not installable here, so it is checked by reading its syntax tree.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from agent import nodes
from agent.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch" / "finetune.launch.py"
PARAMS = REPO / "config" / "finetune.yaml"
EXECUTABLES = ("finetune_node", "sim_driver")


def parse_cli(argv: list[str]):
    """Parse an ``agent`` command line as the real CLI does (sim-driver parses its own flags)."""
    if argv[:2] == ["robot", "sim-driver"]:
        from robot.driver import add_arguments
        parser = argparse.ArgumentParser(prog="agent robot sim-driver")
        add_arguments(parser)
        return parser.parse_args(argv[2:])
    return build_parser().parse_args(argv)


def _module_constant(path: Path, name: str):
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path.name} assigns no {name}")


# -- colcon build -----------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["copy", "symlink"])
def colcon_build(request, tmp_path_factory):
    """``colcon build``, and ``colcon build --symlink-install`` (setup.py develop in the build
    space, which sees neither pyproject.toml nor install_scripts unless setup.py sees to it):
    (install dir, PYTHONPATH the install's hooks would set)."""
    if importlib.util.find_spec("colcon_core") is None or importlib.util.find_spec("colcon_ros") is None:
        pytest.skip("colcon-core and colcon-ros are not installed (pip install -e '.[test]')")
    base = tmp_path_factory.mktemp(f"colcon-{request.param}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("AMENT_PREFIX_PATH", None)
    colcon = [sys.executable, "-c", "import sys; from colcon_core.command import main; sys.exit(main())"]
    cmd = colcon + ["--log-base", str(base / "log"), "build", "--base-paths", str(REPO),
                    "--build-base", str(base / "build"), "--install-base", str(base / "install"),
                    "--event-handlers", "console_direct+"] + (["--symlink-install"] if request.param == "symlink" else [])
    result = subprocess.run(cmd, cwd=base, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Finished <<< agent" in result.stdout + result.stderr
    assert "doesn't explicitly install" not in result.stdout + result.stderr  # marker and manifest are ours
    install = base / "install" / "agent"
    site = next((install / "lib").glob("python3*/site-packages"))
    path = str(site) if request.param == "copy" else os.pathsep.join([str(base / "build" / "agent"), str(site)])
    return install, path


@pytest.fixture(scope="module")
def colcon_install(colcon_build):
    return colcon_build[0]


def test_colcon_build_installs_the_ament_layout(colcon_install):
    share = colcon_install / "share"
    assert (share / "ament_index" / "resource_index" / "packages" / "agent").is_file()
    assert (share / "agent" / "package.xml").read_text() == (REPO / "package.xml").read_text()
    assert (share / "agent" / "launch" / "finetune.launch.py").read_text() == LAUNCH.read_text()
    assert sorted(p.name for p in (share / "agent" / "config").glob("*.yaml")) == \
        sorted(p.name for p in (REPO / "config").glob("*.yaml"))
    for name in EXECUTABLES:
        exe = colcon_install / "lib" / "agent" / name
        assert exe.is_file() and os.access(exe, os.X_OK), exe
    site = next(Path(p) for p in colcon_build_path(colcon_install) if (Path(p) / "agent").exists())
    assert (site / "robot" / "config" / "cyclonedds.xml").is_file()  # package data travels
    assert (site / "agent" / "nodes.py").is_file() and (site / "sims" / "arm" / "arm.xml").is_file()


def colcon_build_path(install: Path) -> list[str]:
    build = install.parents[1] / "build" / "agent"
    return [str(build), *map(str, (install / "lib").glob("python3*/site-packages"))]


def test_node_executables_run_under_the_python_that_ran_colcon(colcon_install):
    """What the README's workstation recipe rests on: colcon run from a venv makes nodes that
    run in that venv (where pip put torch, mujoco and cyclonedds)."""
    for name in EXECUTABLES:
        shebang = (colcon_install / "lib" / "agent" / name).read_text().splitlines()[0]
        assert shebang == f"#!{os.path.normpath(sys.executable)}"


def test_installed_node_executables_run_from_the_install_tree(colcon_build):
    colcon_install, path = colcon_build
    env = {**os.environ, "PYTHONPATH": path}
    for name, command in (("sim_driver", "agent robot sim-driver"), ("finetune_node", "agent finetune")):
        exe = colcon_install / "lib" / "agent" / name
        ok = subprocess.run([str(exe), "--help"], env=env, capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0 and command in ok.stdout, ok.stderr
        bad = subprocess.run([str(exe), "--ros-args", "-p", "speed:=3"], env=env, capture_output=True, text=True,
                             timeout=60)
        assert bad.returncode == 2 and f"{name}: error: {name} takes the parameters" in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr


# -- package.xml, launch file, parameter file ----------------------------------------------------
def test_package_xml_is_format_3_ament_python_with_the_runtime_dependencies():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "agent"
    assert root.findtext("export/build_type") == "ament_python"
    depends = {e.text for e in root.iter("exec_depend")}
    assert {"rclpy", "launch", "launch_ros", "sensor_msgs", "std_msgs", "trajectory_msgs", "geometry_msgs",
            "diagnostic_msgs"} <= depends
    assert (REPO / "resource" / "agent").is_file() and (REPO / "resource" / "agent").stat().st_size == 0


def test_launch_file_declares_the_arguments_and_starts_installed_executables():
    tree = ast.parse(LAUNCH.read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    arguments = _module_constant(LAUNCH, "ARGUMENTS")
    assert {"use_sim", "algo", "init", "steps", "out", "task", "control_rate", "domain_id", "joint_states_topic",
            "command_topic", "trajectory_topic", "object_pose_topic", "estop_topic", "intervention_topic",
            "status_topic", "transport"} <= arguments.keys()
    setup_nodes = _module_constant(REPO / "setup.py", "NODES")
    assert _module_constant(LAUNCH, "FINETUNE_EXECUTABLE") in setup_nodes
    assert _module_constant(LAUNCH, "SIM_EXECUTABLE") in setup_nodes
    assert set(setup_nodes.values()) <= {"finetune_node", "sim_driver"} and all(
        callable(getattr(nodes, f)) for f in setup_nodes.values())
    # every argument a node receives is a parameter that node understands
    finetune = _module_constant(LAUNCH, "FINETUNE_PARAMETERS")
    sim = _module_constant(LAUNCH, "SIM_PARAMETERS")
    assert finetune.keys() <= arguments.keys() and sim.keys() <= arguments.keys()
    assert set(finetune.values()) <= {"task", *nodes.FINETUNE_FLAGS, *nodes.FINETUNE_ENV_KWARGS}
    assert set(sim.values()) <= set(nodes.SIM_DRIVER_PARAMETERS)


def test_parameter_file_is_understood_by_both_nodes_and_the_cli(tmp_path):
    content = yaml.safe_load(PARAMS.read_text())
    assert set(content) == {"finetune_node", "sim_driver"}
    arguments = _module_constant(LAUNCH, "ARGUMENTS")
    assert set(content["finetune_node"]["ros__parameters"]) <= arguments.keys()
    finetune = nodes.finetune_argv(["--ros-args", "-r", "__node:=finetune_node", "--params-file", str(PARAMS)])
    sim = nodes.sim_driver_argv(["--ros-args", "-r", "__node:=sim_driver", "--params-file", str(PARAMS)])
    args = parse_cli(finetune)
    assert args.env == "robot/ArmReach-v0" and args.algo == "wsrl" and args.steps == 20000
    assert "--init" not in finetune  # empty: from scratch
    assert dict(kv.split("=", 1) for kv in args.env_kwargs) == {
        "rate": "20.0", "joint_states_topic": "/joint_states", "command_topic": "/forward_position_controller/commands",
        "trajectory_topic": "/joint_trajectory_controller/joint_trajectory", "object_pose_topic": "/object_pose",
        "estop_topic": "/agent/estop", "intervention_topic": "/agent/intervention", "status_topic": "/agent/status",
        "transport": "auto", "node_name": "finetune_node", "namespace": "/"}
    args = parse_cli(sim)
    assert (args.task, args.rate, args.stale_timeout, args.domain_id, args.transport) == ("reach", 20.0, 0.5, None, "auto")


# -- argument translation of the nodes -------------------------------------------------------------
def test_sim_driver_translates_ros_parameters_into_the_cli():
    argv = nodes.sim_driver_argv(["--ros-args", "-p", "task:=push", "-p", "control_rate:=50", "-p", "domain_id:=7",
                                  "-p", "joint_states_topic:=/arm/joint_states", "--param", "stale_timeout:=0.25"])
    assert argv == ["robot", "sim-driver", "--node-name", "sim_driver", "--namespace", "/", "--task", "push", "--rate", "50", "--domain-id", "7",
                    "--joint-states-topic", "/arm/joint_states",
                    "--command-topic", "/forward_position_controller/commands",
                    "--trajectory-topic", "/joint_trajectory_controller/joint_trajectory",
                    "--object-pose-topic", "/object_pose", "--reset-topic", "/agent/reset_objects",
                    "--status-topic", "/sim_driver/status", "--stale-timeout", "0.25", "--transport", "auto"]
    args = parse_cli(argv)
    assert (args.task, args.rate, args.domain_id, args.stale_timeout) == ("push", 50.0, 7, 0.25)


def test_finetune_node_translates_flags_and_parameters_with_precedence(tmp_path):
    params = tmp_path / "launch_params.yaml"  # what launch_ros writes for a dict of parameters
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"algo": "sac", "steps": 100, "task": "pick_place"}},
                                      "other_node": {"ros__parameters": {"algo": "h2o"}}}))
    argv = nodes.finetune_argv(["--steps", "300", "--ros-args", "-r", "__node:=finetune_node", "--params-file",
                                str(params), "-p", "steps:=200", "-p", "init:=runs/calql", "-p", "domain_id:=12",
                                "--", "--out=runs/x"])
    args = parse_cli(argv)
    assert args.env == "robot/ArmPickPlace-v0" and args.algo == "sac" and args.init == "runs/calql"
    assert args.steps == 300 and args.out == "runs/x"  # plain flags beat -p, which beats files
    assert args.env_kwargs == ["domain_id=12", "node_name=finetune_node", "namespace=/"]


@pytest.mark.parametrize(
    "function, argv, message",
    [
        (nodes.finetune_argv, ["--ros-args", "-p", "stepz:=5"], "finetune_node takes the parameters .* found unknown stepz"),
        (nodes.finetune_argv, ["--ros-args", "-p", "task:=stack"], "task must be one of reach, push, pick_place, found 'stack'"),
        (nodes.finetune_argv, ["--ros-args", "-p", "steps"], "-p must be followed by name:=value, found 'steps'"),
        (nodes.sim_driver_argv, ["--rate"], "Flag --rate must be followed by a value, found nothing"),
        (nodes.sim_driver_argv, ["push"], "must be --name value flags or --ros-args ..., found 'push'"),
        (nodes.sim_driver_argv, ["--ros-args", "--params-file", "/nonexistent.yaml"], "must be readable YAML"),
        (nodes.finetune_argv, ["--command-topic", "/a,b"], "'/a,b' is not a valid ROS 2 topic name"),
        (nodes.finetune_argv, ["--ros-args", "-p", "transport:=zenoh"], "transport must be one of auto, dds, rclpy, found 'zenoh'"),
        (nodes.sim_driver_argv, ["--ros-args", "-p", "transport:=rcl"], "sim_driver's transport must be one of"),
    ],
)
def test_bad_node_arguments_are_one_clear_error(function, argv, message):
    with pytest.raises(ValueError, match=message):
        function(argv)


def test_namespaces_remaps_and_node_names_move_the_topics_as_ros_2_resolves_them():
    """What a node receives under PushRosNamespace('robot1') and SetRemap: relative names go
    under the namespace, absolute ones stay unless a rule remaps them (first match wins;
    ``node:from:=to`` only for that node)."""
    argv = ["--ros-args", "-r", "__ns:=/robot1", "-r", "__node:=arm_learner",
            "-r", "/joint_states:=/robot1/joint_states", "-r", "other_node:/agent/estop:=/nowhere",
            "-r", "arm_learner:status:=~/status", "-p", "command_topic:=commands", "-p", "status_topic:=status"]
    args = parse_cli(nodes.finetune_argv(argv))
    kwargs = dict(kv.split("=", 1) for kv in args.env_kwargs)
    assert kwargs["joint_states_topic"] == "/robot1/joint_states"  # remapped default
    assert kwargs["command_topic"] == "/robot1/commands"  # relative: under the namespace
    assert kwargs["status_topic"] == "/robot1/arm_learner/status"  # node-specific rule to a private name
    assert "estop_topic" not in kwargs  # another node's rule; the absolute default stays
    assert (kwargs["node_name"], kwargs["namespace"]) == ("arm_learner", "/robot1")  # what ros2 node list shows
    other = parse_cli(nodes.finetune_argv(["--ros-args", "-r", "sim_driver:__ns:=/sim", "-r", "sim_driver:__node:=arm"]))
    assert dict(kv.split("=", 1) for kv in other.env_kwargs)["namespace"] == "/"  # another node's name rules
    sim = parse_cli(nodes.sim_driver_argv(["--ros-args", "-r", "__ns:=/robot1", "-r", "/joint_states:=joint_states",
                                           "-p", "command_topic:=commands"]))
    assert (sim.joint_states_topic, sim.command_topic, sim.object_pose_topic) == (
        "/robot1/joint_states", "/robot1/commands", "/object_pose")
    assert (sim.node_name, sim.namespace) == ("sim_driver", "/robot1")
    assert nodes.resolve_name("~/x", "/", "n") == "/n/x" and nodes.resolve_name("x", "/", "n") == "/x"
    with pytest.raises(ValueError, match="must be an absolute namespace"):
        nodes.finetune_argv(["--ros-args", "-r", "__ns:=robot1"])
    with pytest.raises(ValueError, match="is not a valid ROS 2 topic name"):
        nodes.finetune_argv(["--ros-args", "-p", "command_topic:=a b"])


def test_use_sim_time_from_launch_is_accepted():
    assert nodes.sim_driver_argv(["--ros-args", "-p", "use_sim_time:=false"])[6:8] == ["--task", "reach"]
