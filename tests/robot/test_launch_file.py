"""The launch file's decisions, run against stand-ins for launch and launch_ros (the ROS 2
launch stack is not installable here): a failed fine-tuning ends the launch with an error,
a finished one with a true reason; bad launch arguments stop it before any node starts."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


class _Recorded:
    """Any launch action: keeps what it was built with."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _Configuration:
    values: dict[str, str] = {}

    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return self.values.get(self.name, "")


@pytest.fixture
def launch_file(monkeypatch, tmp_path):
    names = {"Shutdown", "OpaqueFunction", "RegisterEventHandler", "DeclareLaunchArgument", "OnProcessExit", "Node",
             "LaunchDescription"}
    stubs = {"launch": ["LaunchDescription"], "launch.actions": ["DeclareLaunchArgument", "OpaqueFunction",
             "RegisterEventHandler", "Shutdown"], "launch.event_handlers": ["OnProcessExit"],
             "launch.substitutions": [], "launch_ros": [], "launch_ros.actions": ["Node"],
             "ament_index_python": [], "ament_index_python.packages": []}
    classes = {n: type(n, (_Recorded,), {}) for n in names}
    for module, members in stubs.items():
        stub = types.ModuleType(module)
        for member in members:
            setattr(stub, member, classes[member])
        monkeypatch.setitem(sys.modules, module, stub)
    sys.modules["launch.substitutions"].LaunchConfiguration = _Configuration
    sys.modules["ament_index_python.packages"].get_package_share_directory = lambda package: str(REPO)
    spec = importlib.util.spec_from_file_location("finetune_launch", REPO / "launch" / "finetune.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(_Configuration, "values", {"params_file": str(REPO / "config" / "finetune.yaml"), "use_sim": "true"})
    return module, classes


def test_a_failed_fine_tuning_ends_the_launch_with_an_error_and_a_finished_one_with_its_reason(launch_file):
    module, classes = launch_file
    done = module._on_finetune_exit(types.SimpleNamespace(returncode=0), None)
    assert isinstance(done[0], classes["Shutdown"]) and done[0].kwargs["reason"] == "fine-tuning finished"
    failed = module._on_finetune_exit(types.SimpleNamespace(returncode=2), None)
    assert not any(isinstance(a, classes["Shutdown"]) for a in failed)  # no "finished" reason for a failure
    action = failed[0]
    with pytest.raises(RuntimeError, match="finetune_node failed with exit code 2"):
        action.kwargs["function"](None, *action.kwargs["args"])  # what the launch service runs, then returns 1


def test_nodes_are_started_with_the_exit_handler_on_the_fine_tuning_node(launch_file):
    module, classes = launch_file
    nodes = module._nodes(None)
    finetune, handler, sim = nodes
    assert finetune.kwargs["executable"] == "finetune_node" and "on_exit" not in finetune.kwargs
    watch = handler.args[0]
    assert watch.kwargs["target_action"] is finetune and watch.kwargs["on_exit"] is module._on_finetune_exit
    assert sim.kwargs["executable"] == "sim_driver"


@pytest.mark.parametrize("values, message", [
    ({"use_sim": "ture"}, "use_sim must be true or false, found 'ture'"),
    ({"params_file": "/nonexistent/robot.yaml"}, "params_file '/nonexistent/robot.yaml' does not exist"),
    ({"params_file": "BAD"}, "finetune_node .* takes the parameters .* found unknown stepz"),
    ({"params_file": "TRANSPORT"}, "sim_driver's transport must be one of auto, dds, rclpy, found 'zenoh'"),
])
def test_bad_launch_arguments_stop_the_launch_before_any_node(launch_file, monkeypatch, tmp_path, values, message):
    module, _ = launch_file
    files = {"BAD": "finetune_node:\n  ros__parameters:\n    stepz: 5\n",
             "TRANSPORT": "sim_driver:\n  ros__parameters:\n    transport: zenoh\n"}
    if values.get("params_file") in files:
        path = tmp_path / "robot.yaml"
        path.write_text(files[values["params_file"]])
        values = {**values, "params_file": str(path)}
    monkeypatch.setattr(_Configuration, "values", {**_Configuration.values, **values})
    with pytest.raises(ValueError, match=message):
        module._nodes(None)
