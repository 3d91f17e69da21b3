"""ROS 2 bridge to the physical arm (message types, transports, safety layer, the arm
env over ROS 2, the simulated driver). Nothing is registered yet: the bridge arrives
with its own issue. Importing this package must stay cheap and dependency-free."""
PREFIX = "robot/"
