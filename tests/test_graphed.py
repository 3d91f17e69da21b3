"""The CUDA-graph update (agent/learners/graphed.py): a clear refusal without CUDA, and
on a GPU the replayed update trains like the eager one."""
import pytest
import torch

from agent.learners import LEARNERS, make_learner
from agent.learners.graphed import GraphedUpdate

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _batch(device: str, k: int = 1, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    shape = (k, 64) if k > 1 else (64,)
    out = {"obs": torch.randn(*shape, 5, generator=g), "action": torch.rand(*shape, 2, generator=g) * 2 - 1,
           "reward": torch.rand(*shape, generator=g), "next_obs": torch.randn(*shape, 5, generator=g),
           "terminated": torch.zeros(*shape), "truncated": torch.zeros(*shape)}
    return {k: v.to(device) for k, v in out.items()}


def test_refused_without_cuda_in_one_sentence(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        GraphedUpdate(lambda batch: {})


def test_pretrain_refuses_cuda_graph_on_cpu():
    from agent.pretrain import PretrainConfig, make_update_fn

    learner = make_learner("iql", LEARNERS["iql"][1](hidden_dims=[8]), 5, 2)
    with pytest.raises(ValueError, match="--cuda-graph captures the update on a CUDA device"):
        make_update_fn(learner, PretrainConfig(cuda_graph=True))


@cuda
@pytest.mark.parametrize("algo,k", [("sacn", 4), ("iql", 1), ("calql", 1)])
def test_graphed_update_trains(algo, k):
    torch.manual_seed(0)
    cfg = LEARNERS[algo][1](hidden_dims=[32, 32])
    learner = make_learner(algo, cfg, 5, 2, device="cuda")
    update = GraphedUpdate(learner.update)
    extra = {"mc_return": torch.rand(64, device="cuda")} if algo == "calql" else {}
    first = {**_batch("cuda", k, 0), **extra}
    before = [p.detach().clone() for p in learner.actor.parameters()]
    out = update(first)
    losses = {name: float(v) for name, v in out.items() if v.numel() == 1}
    assert all(v == v for v in losses.values())
    after_one = [p.detach().clone() for p in learner.actor.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(before, after_one))  # the replay updated the actor
    second = {**_batch("cuda", k, 1), **extra}
    out2 = {name: float(v) for name, v in update(second).items() if v.numel() == 1}
    assert out2 != losses  # new inputs reached the graph
    assert any(not torch.equal(a, b.detach()) for a, b in zip(after_one, learner.actor.parameters()))
    with pytest.raises(ValueError, match="batch shapes are fixed once captured"):
        update({**_batch("cuda", k, 2), "obs": torch.zeros(7, 5, device="cuda")} | extra)
