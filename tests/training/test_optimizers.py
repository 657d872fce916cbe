"""Adafactor as storybook trains full fine-tunes with it: its step, its step fused into the backward pass (the same
weights as a step after it), bf16 weights rounded stochastically (updates far below bf16's resolution kept on
average), and its state restored in fp32 after a resume."""

import torch

from storybook.training.optimizers import Adafactor, fuse_into_backward, stochastic_round_


def model_and_batch(dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Conv1d(16, 4, 1))
    return model.to(dtype), torch.randn(3, 8, 5).transpose(1, 2)  # (batch, length, features)


def loss_of(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    hidden = model[1](model[0](batch.to(model[0].weight.dtype)))  # (3, 5, 16)
    return model[2](hidden.transpose(1, 2)).float().square().mean()


def test_a_step_fused_into_the_backward_pass_gives_the_weights_of_a_step_after_it():
    separate, batch = model_and_batch()
    fused, _ = model_and_batch()
    plain = Adafactor(separate.parameters(), lr=1e-2)
    inline = Adafactor(fused.parameters(), lr=1e-2)
    fuse_into_backward(inline, list(fused.parameters()), max_norm=1e9)
    for _ in range(3):
        loss_of(separate, batch).backward()
        plain.step()
        plain.zero_grad(set_to_none=True)
        loss_of(fused, batch).backward()
        assert all(p.grad is None for p in fused.parameters())  # no gradient is held after the backward pass
    for a, b in zip(separate.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert loss_of(fused, batch) < loss_of(model_and_batch()[0], batch)  # and it learns


def test_a_matrix_state_is_its_row_and_column_means_a_convolution_read_as_out_by_in_times_kernel():
    model, batch = model_and_batch()
    optimizer = Adafactor(model.parameters(), lr=1e-2)
    loss_of(model, batch).backward()
    optimizer.step()
    linear, conv = optimizer.state[model[0].weight], optimizer.state[model[2].weight]  # (16, 8), (4, 16, 1)
    assert linear["row"].shape == (16,) and linear["column"].shape == (8,)
    assert conv["row"].shape == (4,) and conv["column"].shape == (16,)
    assert optimizer.state[model[0].bias]["square"].shape == (16,)


def test_stochastic_rounding_keeps_updates_below_bf16_resolution_on_average():
    one = torch.ones(100_000, dtype=torch.float32)
    target = torch.empty_like(one, dtype=torch.bfloat16)
    stochastic_round_(target, one + 1e-4, torch.Generator().manual_seed(0))  # bf16 steps by 2**-7 near 1
    assert set(target.unique().tolist()) == {1.0, 1.0078125}
    assert abs(target.float().mean().item() - (1 + 1e-4)) < 2e-5  # nearest rounding would give exactly 1.0


def test_bf16_weights_train_and_a_resumed_optimizer_keeps_its_moments_in_fp32():
    model, batch = model_and_batch(torch.bfloat16)
    optimizer = Adafactor(model.parameters(), lr=1e-2, seed=3)
    before = loss_of(model, batch).item()
    for _ in range(5):
        loss_of(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert loss_of(model, batch).item() < before
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    resumed = Adafactor(model.parameters(), lr=1e-2, seed=3)
    resumed.load_state_dict(optimizer.state_dict())
    state = resumed.state[model[0].weight]
    assert state["row"].dtype == torch.float32 and state["step"].item() == 5
