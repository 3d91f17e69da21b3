"""Fine-tune a policy on an arm over ROS 2: ``ros2 launch agent finetune.launch.py``.

Starts ``finetune_node`` (``agent finetune --env robot/Arm<Task>-v0 ...``) and, with
``use_sim:=true``, ``sim_driver`` (the MuJoCo arm behind ros2_control's topics). Node
parameters come from ``params_file`` (default: share/agent/config/finetune.yaml);
any argument given on the command line overrides the file for every node it concerns,
e.g.::

    ros2 launch agent finetune.launch.py use_sim:=true init:=runs/calql-reach steps:=10000
    ros2 launch agent finetune.launch.py params_file:=my_robot.yaml domain_id:=7

When finetune_node exits, the whole launch shuts down. If it failed (a non-zero exit
code), the launch says so and ``ros2 launch`` exits with status 1: the launch service
returns 1 when an action raises, and the exit handler raises for a failed fine-tuning. A
missing or malformed ``params_file``, a parameter no node knows, or a ``use_sim`` that is
not true/false stops the launch the same way, before any node starts.
"""
from __future__ import annotations

import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler, Shutdown
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from agent.nodes import check_launch_arguments

PACKAGE = "agent"
FINETUNE_EXECUTABLE = "finetune_node"
SIM_EXECUTABLE = "sim_driver"

# Launch arguments; an empty value means "as in params_file".
ARGUMENTS = {
    "use_sim": "true: also start the simulated arm driver (sim_driver)",
    "params_file": "ROS 2 parameter file of finetune_node and sim_driver",
    "algo": "fine-tuning algorithm: auto, wsrl, ro2o, h2o, calql, iql, rlpd or sac",
    "init": "pretrained run directory or checkpoint",
    "steps": "online environment steps",
    "out": "run directory",
    "task": "reach, push or pick_place (env robot/Arm<Task>-v0; the simulated scene)",
    "control_rate": "control rate in Hz (robot env and simulated driver)",
    "domain_id": "ROS 2 domain id of both nodes (default: ROS_DOMAIN_ID, else 0)",
    "joint_states_topic": "sensor_msgs/JointState from the arm",
    "command_topic": "std_msgs/Float64MultiArray position commands to the arm",
    "trajectory_topic": "trajectory_msgs/JointTrajectory for resets",
    "object_pose_topic": "geometry_msgs/PoseStamped of the task object",
    "estop_topic": "std_msgs/Bool e-stop (latched)",
    "intervention_topic": "std_msgs/Float64MultiArray operator actions",
    "status_topic": "agent status for the operator",
    "stale_timeout": "seconds without a command before the simulated arm holds position",
    "transport": "auto (rclpy when it loads in the nodes' Python, else Cyclone DDS), dds or rclpy",
}

# which node each argument goes to, under which parameter name
FINETUNE_PARAMETERS = {
    "algo": "algo", "init": "init", "steps": "steps", "out": "out", "task": "task", "control_rate": "control_rate",
    "domain_id": "domain_id", "joint_states_topic": "joint_states_topic", "command_topic": "command_topic",
    "trajectory_topic": "trajectory_topic", "object_pose_topic": "object_pose_topic", "estop_topic": "estop_topic",
    "intervention_topic": "intervention_topic", "status_topic": "status_topic", "transport": "transport",
}
SIM_PARAMETERS = {
    "task": "task", "control_rate": "rate", "domain_id": "domain_id", "joint_states_topic": "joint_states_topic",
    "command_topic": "command_topic", "trajectory_topic": "trajectory_topic",
    "object_pose_topic": "object_pose_topic", "stale_timeout": "stale_timeout", "transport": "transport",
}


def _overrides(context, mapping: dict[str, str]) -> dict:
    values = {}
    for argument, parameter in mapping.items():
        text = LaunchConfiguration(argument).perform(context)
        if text != "":
            values[parameter] = yaml.safe_load(text)
    return values


def _failed(context, code: int):
    raise RuntimeError(f"{FINETUNE_EXECUTABLE} failed with exit code {code} (its error is printed above); "
                       f"the launch stops")


def _on_finetune_exit(event, context):
    """A finished fine-tuning ends the launch; a failed one ends it with an error (status 1)."""
    if event.returncode == 0:
        return [Shutdown(reason="fine-tuning finished")]
    return [OpaqueFunction(function=_failed, args=[event.returncode])]


def _nodes(context):
    params_file = LaunchConfiguration("params_file").perform(context)
    use_sim = check_launch_arguments(params_file, LaunchConfiguration("use_sim").perform(context))
    domain_id = LaunchConfiguration("domain_id").perform(context)
    env = {"ROS_DOMAIN_ID": domain_id} if domain_id else {}
    finetune = Node(package=PACKAGE, executable=FINETUNE_EXECUTABLE, name=FINETUNE_EXECUTABLE, output="screen",
                    parameters=[params_file, _overrides(context, FINETUNE_PARAMETERS)], additional_env=env)
    nodes = [finetune, RegisterEventHandler(OnProcessExit(target_action=finetune, on_exit=_on_finetune_exit))]
    if use_sim:
        nodes.append(
            Node(package=PACKAGE, executable=SIM_EXECUTABLE, name=SIM_EXECUTABLE, output="screen",
                 parameters=[params_file, _overrides(context, SIM_PARAMETERS)], additional_env=env))
    return nodes


def generate_launch_description() -> LaunchDescription:
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "finetune.yaml")
    with open(default_params) as f:
        defaults = yaml.safe_load(f)["finetune_node"]["ros__parameters"]
    declared = []
    for name, description in ARGUMENTS.items():
        default = {"use_sim": "false", "params_file": default_params}.get(name, "")
        if name in defaults:
            description += f" (default in params_file: {defaults[name]!r})"
        declared.append(DeclareLaunchArgument(name, default_value=default, description=description))
    return LaunchDescription(declared + [OpaqueFunction(function=_nodes)])
