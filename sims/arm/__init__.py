"""The project's arm: model files, kinematics, tasks and scripted experts.

``kinematics`` (joint names, limits, forward kinematics) imports only mujoco and numpy,
so ``robot/`` can use it without the gymnasium envs of ``env``.
"""
