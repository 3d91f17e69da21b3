"""Offline-to-online reinforcement learning for robot arms."""
__version__ = "0.1.0"
