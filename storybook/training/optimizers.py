"""The optimisers a run can train with: torch's AdamW, bitsandbytes' 8-bit AdamW, and Adafactor, whose factored second
moments need almost no memory and whose step can run inside the backward pass, parameter by parameter, so that no
gradient of the whole model is ever held at once (kohya's `--fused_backward_pass`, the PyTorch tutorial "How to save
memory by fusing the optimizer step into the backward pass"). Weights trained in bf16 (kohya's `--full_bf16`) are
updated in fp32 and rounded back stochastically, so that updates far below bf16's resolution are not lost.
"""

from collections.abc import Iterable

import torch

from storybook.errors import TrainingError
from storybook.identities.training_config import Optimizer

WEIGHT_DECAY = 1e-2  # diffusers' example scripts' AdamW default, for every optimiser here


def optimizer_class(name: Optimizer) -> type[torch.optim.Optimizer]:
    """The optimiser named `name`. Raises TrainingError when 'adamw-8bit' is asked and bitsandbytes is missing."""
    if name == "adamw":
        return torch.optim.AdamW
    if name == "adafactor":
        return Adafactor
    try:
        import bitsandbytes
    except ImportError as error:
        raise TrainingError(
            f"--optimizer adamw-8bit needs bitsandbytes, which cannot be imported here ({error}): install it with "
            "`pip install 'storybook[gpu]'` on a CUDA machine, or train with --optimizer adamw or adafactor."
        ) from None
    return bitsandbytes.optim.AdamW8bit


def stochastic_round_(target: torch.Tensor, source: torch.Tensor, generator: torch.Generator) -> None:
    """Copy fp32 `source` into bf16 `target`, rounding each value up or down at random in proportion to its distance
    from the two nearest bf16 values, so the rounding is unbiased (the trick of kohya's fused Adafactor): a bf16
    number keeps the high 16 bits of an fp32 one, and adding a random 16-bit integer before truncating rounds up with
    the right probability."""
    bits = source.view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, generator=generator, device=bits.device, dtype=torch.int32)
    target.copy_(((bits + noise) & -65536).view(torch.float32))  # -65536: the mask 0xFFFF0000 as an int32


class Adafactor(torch.optim.Optimizer):
    """Adafactor (Shazeer & Stern 2018) with a fixed learning rate and no first moment, as kohya trains SDXL
    (`scale_parameter=False, relative_step=False, warmup_init=False`): the second moment of a matrix is kept as its
    row and column means only (a weight of 2+ dimensions is read as (out, in * kernel), so a convolution's state is
    as small as a linear layer's), the update is divided by its RMS above 1, weight decay is decoupled.

    `step_parameter` updates one parameter from its gradient, so that the backward pass can call it as each gradient
    is ready (`fuse_into_backward`). bf16 parameters are updated in fp32 and stochastically rounded back, with
    random draws from a generator seeded by the parameter's index and step, so a resumed run rounds as an unbroken
    one did.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        weight_decay: float = WEIGHT_DECAY,
        decay_rate: float = -0.8,
        eps: float = 1e-30,
        clip_threshold: float = 1.0,
        seed: int = 0,
    ):
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "decay_rate": decay_rate,
            "eps": eps,
            "clip_threshold": clip_threshold,
        }
        super().__init__(params, defaults)
        self.seed = seed
        self.index_groups()

    def index_groups(self) -> None:
        """Each parameter's index (for its rounding's seed) and group (for its settings)."""
        self.index = {p: i for i, p in enumerate(p for group in self.param_groups for p in group["params"])}
        self.groups = {p: group for group in self.param_groups for p in group["params"]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the state saved by `state_dict`, its moments in fp32 (torch would cast them to a bf16
        parameter's dtype)."""
        super().load_state_dict(state_dict)
        self.index_groups()  # torch made new group dicts
        for state in self.state.values():
            for key, value in state.items():
                if key != "step":
                    state[key] = value.float()

    @torch.no_grad()
    def step(self, closure=None):
        """Update every parameter that has a gradient."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    self.step_parameter(parameter)
        return loss

    @torch.no_grad()
    def step_parameter(self, parameter: torch.nn.Parameter) -> None:
        """Update `parameter` from its gradient (which it keeps; the caller drops it)."""
        group, state = self.groups[parameter], self.state[parameter]
        grad = parameter.grad.float()
        matrix = grad.dim() >= 2
        if matrix:
            grad = grad.reshape(grad.shape[0], -1)  # (out, in * kernel)
        if not state:
            state["step"] = torch.tensor(0.0)
            if matrix:
                state["row"] = torch.zeros(grad.shape[0], device=grad.device)  # (out,)
                state["column"] = torch.zeros(grad.shape[1], device=grad.device)  # (in * kernel,)
            else:
                state["square"] = torch.zeros_like(grad)
        state["step"] += 1
        step = state["step"].item()
        beta2 = 1.0 - step ** group["decay_rate"]
        squared = grad.square() + group["eps"]
        if matrix:
            state["row"].lerp_(squared.mean(dim=1), 1.0 - beta2)
            state["column"].lerp_(squared.mean(dim=0), 1.0 - beta2)
            row_factor = (state["row"] / state["row"].mean()).rsqrt().unsqueeze(1)  # (out, 1)
            update = grad * row_factor * state["column"].rsqrt().unsqueeze(0)
        else:
            state["square"].lerp_(squared, 1.0 - beta2)
            update = grad * state["square"].rsqrt()
        update /= max(1.0, update.square().mean().sqrt().item() / group["clip_threshold"])
        weights = parameter.detach().float()
        weights.mul_(1 - group["lr"] * group["weight_decay"]).sub_(update.reshape(weights.shape), alpha=group["lr"])
        if parameter.dtype == torch.bfloat16:
            generator = torch.Generator(parameter.device)
            generator.manual_seed(self.seed + 1_000_003 * self.index[parameter] + int(step))
            stochastic_round_(parameter.data, weights, generator)
        else:
            parameter.data.copy_(weights)


def fuse_into_backward(optimizer: Adafactor, parameters: list[torch.nn.Parameter], max_norm: float) -> list:
    """Make each of `parameters` update as soon as its gradient is complete in the backward pass (its gradient is
    clipped to `max_norm` on its own, then dropped): no gradient of the whole model is ever held. Returns the hook
    handles (remove them to stop)."""

    def update(parameter: torch.nn.Parameter) -> None:
        torch.nn.utils.clip_grad_norm_([parameter], max_norm)
        optimizer.step_parameter(parameter)
        parameter.grad = None

    return [parameter.register_post_accumulate_grad_hook(update) for parameter in parameters]
