import pickle

import pytest
import torch
from safetensors.torch import save_file

from storybook.errors import TrainingError
from storybook.training.checkpoints import latest_checkpoint, load_checkpoint, read_state, save_checkpoint


def make_run(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    model, optimizer = make_run(0)
    generator = torch.Generator().manual_seed(7)
    save_checkpoint(tmp_path, 5, {"unet": model}, optimizer, None, generator.get_state(), {"loss_history": [1.0]})
    expected_draw = torch.rand(3, generator=generator)

    other, other_optimizer = make_run(1)
    fresh_generator = torch.Generator().manual_seed(99)
    load_checkpoint(latest_checkpoint(tmp_path), {"unet": other}, other_optimizer, None, fresh_generator)
    assert read_state(latest_checkpoint(tmp_path)) == {"loss_history": [1.0], "step": 5}
    torch.testing.assert_close(other.weight, model.weight)
    assert other_optimizer.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    torch.testing.assert_close(torch.rand(3, generator=fresh_generator), expected_draw)


def test_only_the_newest_complete_checkpoint_is_kept_and_found(tmp_path):
    model, optimizer = make_run(0)
    rng = torch.Generator().get_state()
    save_checkpoint(tmp_path, 10, {"unet": model}, optimizer, None, rng, {})
    save_checkpoint(tmp_path, 20, {"unet": model}, optimizer, None, rng, {})
    (tmp_path / ".step-000030-building-x1y2").mkdir()  # a write killed half-way
    assert latest_checkpoint(tmp_path) == tmp_path / "step-000020"
    assert not (tmp_path / "step-000010").exists()
    assert latest_checkpoint(tmp_path / "missing") is None


def test_weights_of_another_model_are_refused(tmp_path):
    model, optimizer = make_run(0)
    save_checkpoint(tmp_path, 1, {"unet": model}, optimizer, None, torch.Generator().get_state(), {})
    other = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(TrainingError, match="does not fit"):
        load_checkpoint(tmp_path / "step-000001", {"unet": other}, optimizer, None, torch.Generator())
    (tmp_path / "step-000001" / "state.json").write_text("{ half")
    with pytest.raises(TrainingError, match="damaged"):
        read_state(tmp_path / "step-000001")
    for damaged in ("[1, 2]", '{"loss_history": []}', '{"step": "7"}'):
        (tmp_path / "step-000001" / "state.json").write_text(damaged)
        with pytest.raises(TrainingError, match="damaged"):
            read_state(tmp_path / "step-000001")


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint_and_leaves_no_partial_folder(tmp_path, monkeypatch):
    model, optimizer = make_run(0)
    rng = torch.Generator().get_state()
    save_checkpoint(tmp_path, 10, {"unet": model}, optimizer, None, rng, {})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(TrainingError, match=r"No space left on device\); the last one \(step-000010\) is kept"):
        save_checkpoint(tmp_path, 20, {"unet": model}, optimizer, None, rng, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000010"]


def test_a_checkpoint_with_nan_missing_or_unsafe_parts_is_refused_never_resumed(tmp_path):
    model, optimizer = make_run(0)
    rng = torch.Generator().get_state()
    checkpoint = save_checkpoint(tmp_path, 1, {"unet": model}, optimizer, None, rng, {})
    weights = checkpoint / "trainable.safetensors"
    for damaged, said in [
        ({"unet.weight": torch.full((2, 3), float("nan")), "unet.bias": torch.zeros(2)}, "NaN or infinite weights"),
        ({"unet.weight": torch.zeros(2, 3)}, "does not fit this run"),  # the bias is missing: it would stay as it is
        ({}, "does not fit this run"),
    ]:
        save_file(damaged, weights)
        with pytest.raises(TrainingError, match=said):
            load_checkpoint(checkpoint, {"unet": model}, optimizer, None, torch.Generator())
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")  # cut off
    with pytest.raises(TrainingError, match="cut off or damaged"):
        load_checkpoint(checkpoint, {"unet": model}, optimizer, None, torch.Generator())

    save_checkpoint(tmp_path, 2, {"unet": model}, optimizer, None, rng, {})

    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))

    (tmp_path / "step-000002" / "optimizer.pt").write_bytes(pickle.dumps({"state": Payload()}, protocol=2))
    with pytest.raises(TrainingError, match="damaged") as refused:
        load_checkpoint(tmp_path / "step-000002", {"unet": model}, optimizer, None, torch.Generator())
    assert "weights_only" not in str(refused.value) and "trusted" not in str(refused.value)
