import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
