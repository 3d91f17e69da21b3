"""ROS 2 node executables (``lib/agent/finetune_node`` and ``lib/agent/sim_driver``).

``ros2 launch`` and ``ros2 run`` start a node as ``EXECUTABLE [flags] --ros-args -r
__node:=NAME -p name:=value --params-file FILE ...``. These mains read the parameters
from all of those places (plain ``--name value`` flags too), translate them into an
``agent`` command line and run it, so a node does exactly what the documented CLI does.
Precedence, lowest first: parameter files, ``-p`` parameters, plain flags.

A parameter the node does not know is an error (a typo would otherwise be ignored);
``use_sim_time`` is accepted and ignored because launch files commonly pass it. Topic
parameters are resolved as ROS 2 resolves names (``-r __ns:=``, ``-r __node:=``, remap
rules), so the agent command line carries the final absolute names for either transport.
"""
from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROS_ONLY_PARAMETERS = ("use_sim_time",)
TASKS = {"reach": "Reach", "push": "Push", "pick_place": "PickPlace"}

SIM_DRIVER_PARAMETERS = {
    # parameter: (agent robot sim-driver flag, default)
    "task": ("--task", "reach"),
    "rate": ("--rate", 20.0),
    "domain_id": ("--domain-id", None),
    "joint_states_topic": ("--joint-states-topic", "/joint_states"),
    "command_topic": ("--command-topic", "/forward_position_controller/commands"),
    "trajectory_topic": ("--trajectory-topic", "/joint_trajectory_controller/joint_trajectory"),
    "object_pose_topic": ("--object-pose-topic", "/object_pose"),
    "reset_topic": ("--reset-topic", "/agent/reset_objects"),
    "status_topic": ("--status-topic", "/sim_driver/status"),
    "stale_timeout": ("--stale-timeout", 0.5),
    "transport": ("--transport", "auto"),
}
"""sim_driver's parameters; ``control_rate`` is accepted as another name for ``rate``."""

FINETUNE_FLAGS = {"algo": "--algo", "init": "--init", "steps": "--steps", "out": "--out", "config": "--config",
                  "device": "--device", "seed": "--seed"}
"""finetune_node parameters passed to ``agent finetune`` as flags (empty values are left out)."""

FINETUNE_ENV_KWARGS = {
    # parameter: robot env keyword argument
    "control_rate": "rate", "rate": "rate", "domain_id": "domain_id",
    "joint_states_topic": "joint_states_topic", "command_topic": "command_topic",
    "trajectory_topic": "trajectory_topic", "object_pose_topic": "object_pose_topic",
    "estop_topic": "estop_topic", "intervention_topic": "intervention_topic", "status_topic": "status_topic",
    "reset_topic": "reset_topic", "transport": "transport",
}
"""finetune_node parameters passed to the robot env through ``--env-kwargs`` (empty values are left out)."""

TRANSPORTS = ("auto", "dds", "rclpy")


def env_topic_defaults() -> dict[str, str]:
    """The robot env's topic parameters and their defaults, read from its signature."""
    import inspect

    from robot.env import RobotArmEnv

    return {name: p.default for name, p in inspect.signature(RobotArmEnv.__init__).parameters.items()
            if name.endswith("_topic")}


@dataclass
class NodeArgs:
    """A node's command line: its parameters, and the ROS names it runs under."""

    params: dict[str, Any]
    node_name: str
    namespace: str = "/"
    remaps: list[tuple[str, str, str | None]] = field(default_factory=list)  # (from, to, only this node or None)

    def topic(self, name: str) -> str:
        """``name`` as this node sees it on the graph: resolved against the namespace and node
        name as ROS 2 resolves names, then remapped by the first rule whose resolved source
        matches (node-specific rules ``node:from:=to`` only for this node)."""
        resolved = resolve_name(name, self.namespace, self.node_name)
        for source, target, node in self.remaps:
            if node in (None, self.node_name) and resolve_name(source, self.namespace, self.node_name) == resolved:
                return resolve_name(target, self.namespace, self.node_name)
        return resolved


def resolve_name(name: str, namespace: str, node_name: str) -> str:
    """ROS 2 name resolution: ``/x`` stays, ``x`` goes under the namespace, ``~/x`` under the node."""
    if not name or name.endswith("/") or "//" in name or not all(c.isalnum() or c in "_/~{}" for c in name):
        raise ValueError(f"{name!r} is not a valid ROS 2 topic name (letters, digits, _ and / separators; may start with ~/).")
    if name.startswith("/"):
        return name
    ns = namespace.rstrip("/")
    if name == "~" or name.startswith("~/"):
        return f"{ns}/{node_name}{name[1:]}"
    return f"{ns}/{name}"


def parse_node_args(argv: list[str], node_name: str) -> dict[str, Any]:
    """The parameters in a node's command line: parameter files, ``-p name:=value``, plain flags."""
    return parse_node(argv, node_name).params


def parse_node(argv: list[str], node_name: str) -> NodeArgs:
    """Parameters (parameter files, ``-p name:=value``, plain flags; later ones win) and ROS
    names (``-r __node:=``, ``-r __ns:=``, remap rules ``[node:]from:=to``)."""
    namespace = "/"
    remaps: list[tuple[str, str, str | None]] = []
    from_files: dict[str, Any] = {}
    from_ros: dict[str, Any] = {}
    from_flags: dict[str, Any] = {}
    files: list[str] = []
    i, in_ros_args = 0, False
    while i < len(argv):
        arg = argv[i]
        if arg == "--ros-args":
            in_ros_args = True
        elif arg == "--" and in_ros_args:
            in_ros_args = False
        elif in_ros_args:
            value = argv[i + 1] if i + 1 < len(argv) else None
            if arg in ("-p", "--param"):
                name, val = _assignment(value, arg)
                from_ros[name] = _yaml_value(val)
                i += 1
            elif arg in ("-r", "--remap"):
                name, val = _assignment(value, arg)
                only, _, bare = name.rpartition(":") if ":" in name.lstrip("~") else ("", "", name)
                if only and only != node_name:  # a rule for another node of the launch
                    if bare not in ("__node", "__name", "__ns"):
                        remaps.append((bare, val, only))
                elif bare in ("__node", "__name"):
                    node_name = val
                elif bare == "__ns":
                    if not val.startswith("/"):
                        raise ValueError(f"-r __ns:= must be an absolute namespace (starting with /), found {val!r}.")
                    namespace = val
                else:
                    remaps.append((bare, val, only or None))
                i += 1
            elif arg == "--params-file":
                if value is None:
                    raise ValueError("--params-file must be followed by a YAML file, found nothing.")
                files.append(value)
                i += 1
            elif arg in ("-e", "--enclave", "--log-level", "--log-config-file"):
                i += 1  # ROS-side settings that do not change what the node does
            elif not arg.startswith("-"):
                raise ValueError(f"--ros-args takes -p, -r, --params-file and logging options, found {arg!r}.")
        elif arg.startswith("--") and len(arg) > 2:
            name, eq, val = arg[2:].partition("=")
            if not eq:
                if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                    found = repr(argv[i + 1]) if i + 1 < len(argv) else "nothing"
                    raise ValueError(f"Flag {arg} must be followed by a value, found {found}.")
                val = argv[i + 1]
                i += 1
            from_flags[name.replace("-", "_")] = _yaml_value(val)
        else:
            raise ValueError(f"Node arguments must be --name value flags or --ros-args ..., found {arg!r}.")
        i += 1
    for path in files:
        from_files.update(_params_file(path, node_name))
    return NodeArgs({**from_files, **from_ros, **from_flags}, node_name, namespace, remaps)


def _assignment(text: str | None, option: str) -> tuple[str, str]:
    if text is None or ":=" not in text:
        raise ValueError(f"{option} must be followed by name:=value, found {text!r}.")
    name, _, value = text.partition(":=")
    return name, value


def _yaml_value(text: str) -> Any:
    # ROS reads parameter values as YAML ("20" is an int, "true" a bool)
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def _params_file(path: str, node_name: str) -> dict[str, Any]:
    try:
        content = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"Parameter file {path} must be readable YAML, found an error: {exc}.") from None
    if not isinstance(content, dict):
        raise ValueError(f"Parameter file {path} must map node names to ros__parameters, found {type(content).__name__}.")
    params: dict[str, Any] = {}
    for key, section in content.items():
        # keys are node names, optionally with a namespace, and may use the wildcards * and **
        pattern = str(key).strip("/").split("/")[-1] if str(key) != "/**" else "*"
        if fnmatch.fnmatchcase(node_name, pattern) and isinstance(section, dict):
            params.update(section.get("ros__parameters") or {})
    return params


def _check_known(params: dict[str, Any], known: set[str], node: str) -> None:
    unknown = sorted(set(params) - known - set(ROS_ONLY_PARAMETERS))
    if unknown:
        raise ValueError(f"{node} takes the parameters {', '.join(sorted(known))}, found unknown {', '.join(unknown)}.")


def _check_transport(params: dict[str, Any], node: str) -> None:
    value = params.get("transport")
    if _given(value) and value not in TRANSPORTS:
        raise ValueError(f"{node}'s transport must be one of {', '.join(TRANSPORTS)}, found {value!r}.")


def _given(value: Any) -> bool:
    return value is not None and value != ""


def sim_driver_argv(argv: list[str]) -> list[str]:
    """``agent robot sim-driver ...`` for the sim_driver node's arguments."""
    node = parse_node(argv, "sim_driver")
    params = node.params
    _check_known(params, set(SIM_DRIVER_PARAMETERS) | {"control_rate"}, "sim_driver")
    if "control_rate" in params and "rate" not in params:
        params["rate"] = params.pop("control_rate")
    params.pop("control_rate", None)
    _check_transport(params, "sim_driver")
    out = ["robot", "sim-driver", "--node-name", node.node_name, "--namespace", node.namespace]
    for name, (flag, default) in SIM_DRIVER_PARAMETERS.items():
        value = params.get(name, default)
        if name.endswith("_topic") and _given(value):
            value = node.topic(str(value))
        if _given(value):
            out += [flag, str(value)]
    return out


def finetune_argv(argv: list[str]) -> list[str]:
    """``agent finetune --env robot/Arm<Task>-v0 ...`` for the finetune_node node's arguments."""
    node = parse_node(argv, "finetune_node")
    params = node.params
    _check_known(params, set(FINETUNE_FLAGS) | set(FINETUNE_ENV_KWARGS) | {"task"}, "finetune_node")
    _check_transport(params, "finetune_node")
    task = params.get("task", "reach")
    if task not in TASKS:
        raise ValueError(f"finetune_node's task must be one of {', '.join(TASKS)}, found {task!r}.")
    out = ["finetune", "--env", f"robot/Arm{TASKS[task]}-v0"]
    for name, flag in FINETUNE_FLAGS.items():
        if _given(params.get(name)):
            out += [flag, str(params[name])]
    env_kwargs = {}
    for name, default in env_topic_defaults().items():  # a namespace or remap moves a default topic too
        if not _given(params.get(name)) and node.topic(default) != default:
            params[name] = default
    for name, kwarg in FINETUNE_ENV_KWARGS.items():
        if _given(params.get(name)):
            value = node.topic(str(params[name])) if name.endswith("_topic") else str(params[name])
            if "," in value:
                raise ValueError(f"finetune_node's {name} must not contain ',' (it separates --env-kwargs), found {value!r}.")
            env_kwargs[kwarg] = value
    env_kwargs.update(node_name=node.node_name, namespace=node.namespace)  # how ROS tools list the node
    out += ["--env-kwargs", ",".join(f"{k}={v}" for k, v in env_kwargs.items())]
    return out


BOOLEAN_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def check_launch_arguments(params_file: str, use_sim: str) -> bool:
    """What ``finetune.launch.py`` checks before it starts a node (launch_ros would only warn
    about a missing parameter file and start the nodes on built-in defaults): the file is
    readable YAML whose node sections hold only parameters the nodes know, and ``use_sim``
    is a boolean word. Returns ``use_sim``; a problem is one ValueError sentence."""
    word = use_sim.strip().lower()
    if word not in BOOLEAN_WORDS:
        raise ValueError(f"use_sim must be true or false, found {use_sim!r}.")
    if not Path(params_file).is_file():
        raise ValueError(f"params_file {params_file!r} does not exist or is not a file; pass the path of a ROS 2 "
                         f"parameter file (the default is share/agent/config/finetune.yaml).")
    known = {"finetune_node": set(FINETUNE_FLAGS) | set(FINETUNE_ENV_KWARGS) | {"task"},
             "sim_driver": set(SIM_DRIVER_PARAMETERS) | {"control_rate"}}
    for node, names in known.items():
        params = _params_file(params_file, node)
        _check_known(params, names, f"{node} (in {params_file})")
        _check_transport(params, node)
    return BOOLEAN_WORDS[word]


def _usage(node: str, parameters: list[str], command: str) -> str:
    return (f"usage: {node} [--NAME VALUE ...] [--ros-args -p NAME:=VALUE ... --params-file FILE ...]\n\n"
            f"ROS 2 node that runs `agent {command}`; parameters: {', '.join(parameters)}.\n")


def _run(translate: Any, node: str) -> int:
    from agent.cli import main

    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        if translate is sim_driver_argv:
            print(_usage(node, [*SIM_DRIVER_PARAMETERS, "control_rate"], "robot sim-driver"), end="")
        else:
            print(_usage(node, ["task", *FINETUNE_FLAGS, *FINETUNE_ENV_KWARGS], "finetune"), end="")
        return 0
    try:
        argv = translate(sys.argv[1:])
    except ValueError as exc:
        print(f"{node}: error: {exc}", file=sys.stderr)
        return 2
    return int(main(argv) or 0)


def sim_driver() -> int:
    """Entry point of lib/agent/sim_driver."""
    return _run(sim_driver_argv, "sim_driver")


def finetune_node() -> int:
    """Entry point of lib/agent/finetune_node."""
    return _run(finetune_argv, "finetune_node")
