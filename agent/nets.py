"""Network pieces shared by every learner, written once.

* :class:`ObsNormalizer` -- dataset statistics as buffers (saved in checkpoints).
* :class:`CriticEnsemble` -- E critics as stacked weights ``[E, in, out]`` run with one
  batched matmul per layer (no Python loop over members), optional LayerNorm.
* :class:`ValueNetwork` -- V(s) for IQL.
* :class:`TanhGaussianActor` (SAC family), :class:`GaussianActor` (likelihood-based
  imitation), :class:`DeterministicActor`.
* :class:`Temperature` -- auto-tuned entropy coefficient.
* :func:`soft_update` -- one fused lerp over all target parameters.

Networks take already-normalized observations; the learner owns the normalizer.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
_ATANH_LIMIT = 1.0 - 1e-6


def mlp(in_dim: int, hidden_dims: list[int], out_dim: int, layer_norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    last = in_dim
    for width in hidden_dims:
        layers.append(nn.Linear(last, width))
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(nn.ReLU(inplace=True))  # the Linear/LayerNorm output is not kept for backward
        last = width
    layers.append(nn.Linear(last, out_dim))
    return MLP(*layers)


class MLP(nn.Sequential):
    """The Linear/ReLU stack :func:`mlp` builds (an ``nn.Sequential``: same modules, same
    checkpoint keys). Without LayerNorm and on a [B, in] input it runs as one autograd
    node (:class:`_MLPFunction`) with the same kernels, so the results are bit-identical
    and a small network's update spends less time in per-layer module calls and
    autograd nodes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = self.__dict__.get("_linear_params")
        if params is None:
            plain = all(isinstance(m, (nn.Linear, nn.ReLU)) for m in self) and isinstance(self[-1], nn.Linear) \
                and all(isinstance(m, nn.Linear) != isinstance(n, nn.Linear) for m, n in zip(self, list(self)[1:])) \
                and all(m.inplace for m in self if isinstance(m, nn.ReLU)) \
                and all(m.bias is not None for m in self if isinstance(m, nn.Linear))
            params = self.__dict__["_linear_params"] = module_params(self) if plain else []
        if not params or x.dim() != 2:
            return super().forward(x)
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
            return _MLPFunction.apply(x, *params)
        return _mlp(x, params)


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w, b)


def _ensemble_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.baddbmm(b, x, w)


def _layers(x: torch.Tensor, params, layer, acts: list | None = None) -> torch.Tensor:
    """``layer(x, weight, bias)`` for each (weight, bias) pair of ``params`` with in-place
    ReLU between layers; each layer's input is appended to ``acts`` when given."""
    last = len(params) // 2 - 1
    for i in range(last + 1):
        if acts is not None:
            acts.append(x)
        x = layer(x, params[2 * i], params[2 * i + 1])
        if i < last:
            x = x.relu_()
    return x


def _mlp(x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    return _layers(x, params, _linear)


def _one_node_forward(ctx, x: torch.Tensor, params, layer) -> torch.Tensor:
    """Forward of the one-node networks: saves the layer inputs and the weights for
    :func:`_one_node_backward`."""
    acts: list[torch.Tensor] = []
    x = _layers(x, params, layer, acts)
    ctx.save_for_backward(*acts, *params[0::2])
    return x


def _one_node_backward(ctx, grad: torch.Tensor, weight_grad, bias_grad, input_grad) -> tuple:
    """Backward of the one-node networks, layer by layer from the last: the weight and
    bias gradients the running backward wants (``weight_grad(grad, act, weight)``,
    ``bias_grad(grad)``), then the gradient of the layer's input
    (``input_grad(grad, act, weight)``), through the ReLU in place on the buffer this node
    owns; stops once nothing further down is wanted."""
    saved = ctx.saved_tensors
    acts, weights = saved[:len(saved) // 2], saved[len(saved) // 2:]
    wanted = _wanted_grads(ctx)
    grads: list[torch.Tensor | None] = [None] * len(wanted)
    for i in reversed(range(len(acts))):
        if wanted[2 * i + 1]:
            grads[2 * i + 1] = weight_grad(grad, acts[i], weights[i])
        if wanted[2 * i + 2]:
            grads[2 * i + 2] = bias_grad(grad)
        if not any(wanted[:2 * i + 1]):
            break
        grad = input_grad(grad, acts[i], weights[i])
        if i > 0:  # through the ReLU whose output is acts[i]
            torch.ops.aten.threshold_backward.grad_input(grad, acts[i], 0, grad_input=grad)
        else:
            grads[0] = grad
    return tuple(grads)


def _mlp_weight_grad(grad: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    # mat2 = w.t(); its gradient, transposed back to w's layout
    column_major = w.stride(1) == 1 and w.stride(0) == w.size(1)
    return grad.t().mm(x) if column_major else x.t().mm(grad).t()


def _mlp_bias_grad(grad: torch.Tensor) -> torch.Tensor:
    return grad.sum(0, keepdim=True).view(-1)  # the engine's sum_to the bias


def _mlp_input_grad(grad: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if x.stride(0) == 1 and x.stride(1) == x.size(0):  # mat1 column-major
        return w.t().mm(grad.t()).t()
    return grad.mm(w)


class _MLPFunction(torch.autograd.Function):
    """:func:`_mlp` as one autograd node; forward runs ``linear`` (``addmm``) and in-place
    ReLU, backward the formulas of ``addmm``'s and ReLU's derivatives with the same
    kernels and operand layouts (``mm_mat1_backward`` / ``mm_mat2_backward``, the bias
    gradient summed over the batch, ``threshold_backward`` in place on the gradient
    buffer this node owns), so the gradients are bit-identical."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return _one_node_forward(ctx, x, params, _linear)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _one_node_backward(ctx, grad, _mlp_weight_grad, _mlp_bias_grad, _mlp_input_grad)


class ObsNormalizer(nn.Module):
    """(obs - mean) / std with statistics fixed from the dataset, clipped to +-CLIP; saved as buffers.

    The clip keeps a state the data never showed from reaching the networks as an input
    thousands of deviations out: on arm push the cube's height barely varies in the data
    (std 1.4 mm), a cube knocked off the table fell 50 m, and IQL fine-tuning bootstrapped
    from those inputs until its Q reached 1e5. No offline push state is past 8."""

    CLIP = 10.0

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, mean: np.ndarray, var: np.ndarray, eps: float = 1e-3) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(np.sqrt(var) + eps, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return ((obs - self.mean) / self.std).clamp(-self.CLIP, self.CLIP)


# -- ensembles -------------------------------------------------------------------------
class VectorizedLinear(nn.Module):
    """E independent linear layers: x [E, B, in] -> [E, B, out] = x @ W[e] + b[e]."""

    def __init__(self, in_features: int, out_features: int, ensemble_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(ensemble_size, 1, out_features))
        # the same initialization nn.Linear gives each member
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class VectorizedLayerNorm(nn.Module):
    """LayerNorm over the feature dim with separate affine parameters per member."""

    def __init__(self, features: int, ensemble_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ensemble_size, 1, features))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class CriticEnsemble(nn.Module):
    """Q_e(s, a) for e = 1..E. forward(obs [B, o], action [B, a]) -> [E, B].

    Inputs may also carry a leading member dim ([E, B, .]) so that each member sees its
    own batch (bootstrapped ensembles)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: list[int], ensemble_size: int = 2,
                 layer_norm: bool = False):
        super().__init__()
        self.ensemble_size = ensemble_size
        layers: list[nn.Module] = []
        last = obs_dim + act_dim
        for width in hidden_dims:
            layers.append(VectorizedLinear(last, width, ensemble_size))
            if layer_norm:
                layers.append(VectorizedLayerNorm(width, ensemble_size))
            # in place: the matmul's (or LayerNorm's) output is not kept for backward,
            # so this saves one [E, B, width] allocation per layer
            layers.append(nn.ReLU(inplace=True))
            last = width
        layers.append(VectorizedLinear(last, 1, ensemble_size))
        self.net = nn.Sequential(*layers)
        self.layer_norm = layer_norm

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], dim=-1)
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.ensemble_size, -1, -1)
        if self.layer_norm:
            return self.net(x).squeeze(-1)
        params = module_params(self.net)  # W1, b1, W2, b2, ...
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
            return _EnsembleMLP.apply(x, *params).squeeze(-1)
        return _ensemble_mlp(x, params).squeeze(-1)


def _ensemble_mlp(x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """The stacked Linear/ReLU layers of :class:`CriticEnsemble` (what its ``net`` computes)."""
    return _layers(x, params, _ensemble_linear)


def _ensemble_weight_grad(grad: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    # x^T @ grad; for one output (the Q head), as the row vector grad^T @ x transposed
    # back: the same products summed in the same order (bit-identical), without the
    # batched-gemm path's ~10x overhead for a single column
    if grad.shape[-1] == 1:
        return grad.transpose(1, 2).bmm(x).transpose(1, 2)
    return x.transpose(1, 2).bmm(grad)


def _ensemble_bias_grad(grad: torch.Tensor) -> torch.Tensor:
    return grad.sum(1, keepdim=True)  # the engine's sum_to the [E, 1, out] bias


def _ensemble_input_grad(grad: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    # grad @ W^T; a contraction over one output is a plain product (exact either way)
    return grad * w.transpose(1, 2) if grad.shape[-1] == 1 else grad.bmm(w.transpose(1, 2))


class _EnsembleMLP(torch.autograd.Function):
    """:func:`_ensemble_mlp` as one autograd node. Forward and backward run the kernels
    the per-layer autograd graph runs (``baddbmm`` and in-place ReLU; ``bmm`` with
    transposes, a sum over the batch for the biases, ``threshold_backward``), so the
    values are bit-identical; what changes is that ReLU's backward writes into the
    gradient buffer this node owns instead of allocating an [E, B, width] tensor per
    layer (most of the non-matmul time of a large ensemble update), and one node
    replaces 2L - 1 (less engine work for small ones). Gradients of parameters the
    running backward does not ask for (the critic under an actor loss) are skipped, as
    the engine skips them for built-in nodes."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return _one_node_forward(ctx, x, params, _ensemble_linear)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _one_node_backward(ctx, grad, _ensemble_weight_grad, _ensemble_bias_grad, _ensemble_input_grad)


def _wanted_grads(ctx) -> list[bool]:
    """Which inputs of a custom autograd node the running backward needs gradients for:
    ``needs_input_grad`` narrowed by the engine's own plan (``backward(inputs=...)``
    leaves the others out)."""
    wanted = list(ctx.needs_input_grad)
    if torch.compiler.is_compiling():
        return wanted
    try:
        for j, (node, _) in enumerate(ctx.next_functions):
            if wanted[j] and node is not None:
                wanted[j] = torch._C._will_engine_execute_node(node)
    except RuntimeError:  # autograd.grad with leaf inputs: the engine does not say
        return list(ctx.needs_input_grad)
    return wanted


class ValueNetwork(nn.Module):
    """V(s) -> [B]."""

    def __init__(self, obs_dim: int, hidden_dims: list[int], layer_norm: bool = False):
        super().__init__()
        self.net = mlp(obs_dim, hidden_dims, 1, layer_norm)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


# -- actors ----------------------------------------------------------------------------
class TanhGaussianActor(nn.Module):
    """a = tanh(u), u ~ N(mu(s), sigma(s)); log-probabilities include the tanh Jacobian."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: list[int], layer_norm: bool = False):
        super().__init__()
        self.net = mlp(obs_dim, hidden_dims, 2 * act_dim, layer_norm)

    def dist_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.net(obs).chunk(2, dim=-1)
        return mu, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """log pi(a|s) of given actions in (-1, 1), summed over action dims."""
        mu, log_std = self.dist_params(obs)
        action = action.clamp(-_ATANH_LIMIT, _ATANH_LIMIT)
        return _squashed_log_prob(torch.atanh(action), action, mu, log_std)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterized sample and its log-probability."""
        mu, log_std = self.dist_params(obs)
        u = mu + log_std.exp() * torch.randn_like(mu)
        action = torch.tanh(u)
        return action, _squashed_log_prob(u, action, mu, log_std)

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        mu, log_std = self.dist_params(obs)
        if deterministic:
            return torch.tanh(mu)
        return torch.tanh(mu + log_std.exp() * torch.randn_like(mu))


def _squashed_log_prob(u, action, mu, log_std) -> torch.Tensor:
    gauss = -0.5 * ((u - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    return (gauss - torch.log1p(-action.pow(2) + 1e-6)).sum(-1)


class GaussianActor(nn.Module):
    """a ~ N(tanh(mu(s)), sigma(s)): a Gaussian over actions whose mean is bounded.

    Unlike the tanh-squashed distribution, its likelihood stays finite for dataset
    actions on the bounds (clipped noisy demonstrations), so it is the head for
    likelihood-based imitation (BC, IQL's advantage-weighted regression)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: list[int], layer_norm: bool = False):
        super().__init__()
        self.net = mlp(obs_dim, hidden_dims, 2 * act_dim, layer_norm)

    def dist_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.net(obs).chunk(2, dim=-1)
        return torch.tanh(mu), log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        mean, log_std = self.dist_params(obs)
        return (-0.5 * ((action - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        mean, log_std = self.dist_params(obs)
        if deterministic:
            return mean
        return (mean + log_std.exp() * torch.randn_like(mean)).clamp(-1.0, 1.0)


class DeterministicActor(nn.Module):
    """a = tanh(f(s))."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: list[int], layer_norm: bool = False):
        super().__init__()
        self.net = mlp(obs_dim, hidden_dims, act_dim, layer_norm)

    def forward(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return torch.tanh(self.net(obs))


# -- temperature and targets -----------------------------------------------------------
class Temperature(nn.Module):
    """alpha = exp(log_alpha), tuned so that the policy entropy tracks ``target_entropy``:
    L(alpha) = -E[ log_alpha * (log pi(a|s) + target_entropy) ]."""

    def __init__(self, initial: float = 1.0):
        super().__init__()
        if not (math.isfinite(initial) and initial > 0):
            raise ValueError(f"the initial temperature (initial_alpha) must be a positive number, got {initial}.")
        self.log_alpha = nn.Parameter(torch.tensor(math.log(initial), dtype=torch.float32))

    def forward(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def loss(self, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
        return -(self.log_alpha * (log_prob.detach() + target_entropy)).mean()


def module_params(module: nn.Module) -> list[nn.Parameter]:
    """``list(module.parameters())``, gathered once per module: the per-update walk over
    submodules costs more than a small update's kernels. The networks here do not gain
    or lose parameters after construction (loading a checkpoint copies into them, as
    ``.to()`` does; a deepcopy copies the list along with the parameters it holds);
    ``load_state_dict(assign=True)``, which swaps the parameter objects, is not used."""
    params = module.__dict__.get("_params_list")
    if params is None:
        params = module.__dict__["_params_list"] = list(module.parameters())
    return params


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, one fused lerp over all parameters."""
    torch._foreach_lerp_(module_params(target), module_params(source), tau)


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred, target)


@torch.no_grad()
def act(actor: nn.Module, normalizer: ObsNormalizer, obs: np.ndarray, deterministic: bool,
        device: torch.device) -> np.ndarray:
    """Numpy in, numpy out, for one observation or a batch."""
    obs_t = torch.as_tensor(np.asarray(obs, np.float32), device=device)
    single = obs_t.ndim == 1
    action = actor(normalizer(obs_t[None] if single else obs_t), deterministic=deterministic).cpu().numpy()
    return action[0] if single else action
