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


# -- capture and replay, emulated on the CPU ----------------------------------------------------
class _OnGpu:
    """A CPU tensor that reports a CUDA device: all GraphedUpdate looks at."""

    device = torch.device("cuda")

    def __init__(self, t: torch.Tensor):
        self.t = t

    shape = property(lambda self: self.t.shape)
    dtype = property(lambda self: self.t.dtype)

    def detach(self):
        return _OnGpu(self.t.detach())

    def clone(self):
        return _OnGpu(self.t.clone())

    def copy_(self, other):
        self.t.copy_(other.t)
        return self


class _FakeCuda:
    """Streams that record where work ran, and a graph whose capture records the update
    (run on the captured inputs) instead of running it, as CUDA capture does."""

    def __init__(self):
        self.capturing = None
        self.on_side_stream = False
        self.waits = []
        self.graphs = []
        fake = self

        class Stream:
            def wait_stream(self, other):
                fake.waits.append((self, other))

        class Graph:
            def __init__(self):
                self.recorded, self.replays = None, 0
                fake.graphs.append(self)

            def replay(self):
                self.replays += 1
                self.recorded()

        class StreamContext:
            def __init__(self, stream):
                self.stream = stream

            def __enter__(self):
                fake.on_side_stream = isinstance(self.stream, Stream) and self.stream is not fake.current

            def __exit__(self, *exc):
                fake.on_side_stream = False

        class Capture:
            def __init__(self, graph):
                self.graph = graph

            def __enter__(self):
                fake.capturing = self.graph

            def __exit__(self, *exc):
                fake.capturing = None

        self.current = Stream()
        self.Stream, self.CUDAGraph, self.stream, self.graph = Stream, Graph, StreamContext, Capture


@pytest.fixture
def fake_cuda(monkeypatch):
    fake = _FakeCuda()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("Stream", "CUDAGraph", "stream", "graph"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: fake.current)
    return fake


def _recording_update(fake):
    """An update that sums its inputs into a running total; eager calls are logged with
    the batch object they got, and a captured call records itself on the graph."""
    state = {"total": torch.zeros(()), "eager": []}

    def compute(batch):
        state["total"] += batch["x"].t.sum() * batch["w"].t
        return state["total"].clone()

    def update(batch):
        if fake.capturing is not None:
            out = {"total": torch.zeros(())}
            fake.capturing.recorded = lambda: out["total"].copy_(compute(batch))
            return out
        state["eager"].append((batch, fake.on_side_stream))
        return {"total": compute(batch)}

    return update, state


def _gpu_batch(x, w=1.0):
    return {"x": _OnGpu(torch.tensor(x)), "w": _OnGpu(torch.tensor(w))}


@pytest.mark.parametrize("warmup", [1, 3])
def test_capture_warms_up_on_a_side_stream_then_replays(fake_cuda, warmup):
    update, state = _recording_update(fake_cuda)
    graphed = GraphedUpdate(update, warmup=warmup)
    first = _gpu_batch([1.0, 2.0])
    out = graphed(first)
    # warm-up: `warmup` eager updates on the side stream, on a copy of the first batch
    assert len(state["eager"]) == warmup and all(side for _, side in state["eager"])
    assert all(b is graphed.static for b, _ in state["eager"]) and graphed.static["x"] is not first["x"]
    (side, current), (current2, side2) = fake_cuda.waits  # side waits for current, then current for side
    assert current is current2 is fake_cuda.current and side is side2 and isinstance(side, fake_cuda.Stream)
    assert side is not current
    (graph,) = fake_cuda.graphs
    assert graph.replays == 1 and graphed.graph is graph
    assert out["total"].item() == 3.0 * (warmup + 1)  # the warm-up updates are real ones
    first["x"].t.fill_(100.0)  # the caller's tensors are not the captured ones
    out2 = graphed(_gpu_batch([5.0, 5.0], 2.0))
    assert out2 is out and graph.replays == 2 and len(state["eager"]) == warmup
    assert out["total"].item() == 3.0 * (warmup + 1) + 20.0  # new inputs copied into the captured ones
    assert torch.equal(graphed.static["x"].t, torch.tensor([5.0, 5.0]))


def test_captured_update_refuses_other_shapes_dtypes_and_keys(fake_cuda):
    update, _ = _recording_update(fake_cuda)
    graphed = GraphedUpdate(update, warmup=1)
    graphed(_gpu_batch([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"takes 'x' of shape \(2,\) \(torch.float32\), got \(3,\) \(torch.float32\)"):
        graphed(_gpu_batch([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"takes 'x' of shape \(2,\) \(torch.float32\), got \(2,\) \(torch.float64\)"):
        graphed({"x": _OnGpu(torch.tensor([1.0, 2.0], dtype=torch.float64)), "w": _OnGpu(torch.tensor(1.0))})
    with pytest.raises(ValueError, match=r"takes the keys \['w', 'x'\], got \['x'\]"):
        graphed({"x": _OnGpu(torch.tensor([1.0, 2.0]))})
    with pytest.raises(ValueError, match="takes batches on the GPU; 'w' is on cpu"):
        graphed({"x": _OnGpu(torch.tensor([1.0, 2.0])), "w": torch.tensor(1.0)})
    assert fake_cuda.graphs[0].replays == 1  # nothing ran for the refused batches


def test_first_batch_is_checked_for_the_device_before_capture(fake_cuda):
    update, state = _recording_update(fake_cuda)
    graphed = GraphedUpdate(update)
    with pytest.raises(ValueError, match="takes batches on the GPU; 'x' is on cpu"):
        graphed({"x": torch.tensor([1.0]), "w": _OnGpu(torch.tensor(1.0))})
    assert graphed.graph is None and not state["eager"]
    with pytest.raises(ValueError, match="at least one warm-up update, got warmup=0"):
        GraphedUpdate(update, warmup=0)
    assert GraphedUpdate(update).warmup == 3


@cuda
def test_graphed_iql_update_equals_the_eager_one():
    """IQL's update draws no random numbers: replayed, it must match the eager update
    (the graphed run makes `warmup` extra updates on its first batch)."""
    torch.manual_seed(0)
    cfg = LEARNERS["iql"][1](hidden_dims=[32, 32])
    graphed_learner = make_learner("iql", cfg, 5, 2, device="cuda")
    eager = make_learner("iql", cfg, 5, 2, device="cuda")
    eager.load_state_dict(graphed_learner.state_dict())
    update = GraphedUpdate(graphed_learner.update, warmup=2)
    batches = [_batch("cuda", 2, seed) for seed in range(3)]
    for b in [batches[0]] * 2:
        eager.update(b)
    for b in batches:
        out = update(b)
        ref = eager.update(b)
        for key in ref:
            torch.testing.assert_close(out[key], ref[key], rtol=1e-4, atol=1e-5)
    for name in ("actor", "critic", "critic_target", "value"):
        for p, q in zip(getattr(graphed_learner, name).parameters(), getattr(eager, name).parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
