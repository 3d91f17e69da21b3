"""Run inside an environment that has d3rlpy (not a project dependency): time d3rlpy's
IQL or CQL on a dataset exported by bench/learners.py and print updates/s as JSON, or
train it and save the policy (TorchScript) for our evaluation.

    PEER_PYTHON bench/peer_d3rlpy.py DATA.npz {iql,cql} STEPS [THREADS]
    PEER_PYTHON bench/peer_d3rlpy.py DATA.npz iql STEPS THREADS --save POLICY.pt --seed N

The settings mirror ours: batch 256, the same hidden widths, two critics, CPU. The
training mode also mirrors our IQL's learning settings (expectile 0.7, beta 3) and
standardizes observations with the dataset statistics, as our learners do.
"""
from __future__ import annotations

import json
import sys
import time


def main() -> None:
    import numpy as np
    import torch

    torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else torch.get_num_threads())
    import d3rlpy

    path, algo, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    save = sys.argv[sys.argv.index("--save") + 1] if "--save" in sys.argv else ""
    if save:
        d3rlpy.seed(int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 0)
    data = np.load(path)
    dataset = d3rlpy.dataset.MDPDataset(
        observations=data["obs"], actions=data["action"], rewards=data["reward"],
        terminals=data["terminated"].astype(np.float32), timeouts=data["truncated"].astype(np.float32))
    if algo == "iql":
        scaler = {"observation_scaler": d3rlpy.preprocessing.StandardObservationScaler()} if save else {}
        config = d3rlpy.algos.IQLConfig(batch_size=256, expectile=0.7 if save else 0.9, weight_temp=3.0, **scaler,
                                        actor_encoder_factory=d3rlpy.models.VectorEncoderFactory([256, 256]),
                                        critic_encoder_factory=d3rlpy.models.VectorEncoderFactory([256, 256]),
                                        value_encoder_factory=d3rlpy.models.VectorEncoderFactory([256, 256]))
    else:
        config = d3rlpy.algos.CQLConfig(batch_size=256, n_action_samples=10, conservative_weight=5.0,
                                        actor_encoder_factory=d3rlpy.models.VectorEncoderFactory([256, 256, 256]),
                                        critic_encoder_factory=d3rlpy.models.VectorEncoderFactory([256, 256, 256]))
    learner = config.create(device="cpu:0")
    learner.build_with_dataset(dataset)
    kwargs = dict(n_steps=steps, n_steps_per_epoch=steps, show_progress=False, save_interval=10**9,
                  logger_adapter=d3rlpy.logging.NoopAdapterFactory())
    if save:
        start = time.perf_counter()
        learner.fit(dataset, **kwargs)
        learner.save_policy(save)
        print(json.dumps({"algo": algo, "steps": steps, "seconds": time.perf_counter() - start, "policy": save,
                          "d3rlpy": d3rlpy.__version__}))
        return
    learner.fit(dataset, **{**kwargs, "n_steps": 20, "n_steps_per_epoch": 20})  # warm-up
    start = time.perf_counter()
    learner.fit(dataset, **kwargs)
    seconds = time.perf_counter() - start
    print(json.dumps({"algo": algo, "steps": steps, "seconds": seconds, "updates_per_s": steps / seconds,
                      "d3rlpy": d3rlpy.__version__}))


if __name__ == "__main__":
    main()
