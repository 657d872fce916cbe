"""Weights as storybook reads them: NaN or infinite values and files cut off are refused by name, saying what to do,
and torch's advice to load a file unsafely is never shown."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from storybook.errors import ModelError
from storybook.weights import check_finite, damaged_file, file_tensors


def test_nan_or_infinite_weights_in_a_file_or_a_module_are_refused_naming_the_tensor(tmp_path):
    save_file({"good": torch.ones(2), "bad": torch.tensor([1.0, float("nan")])}, tmp_path / "lora.safetensors")
    with pytest.raises(ModelError, match=r"The identity of mia is damaged: .*NaN or infinite values \(lora"):
        check_finite(file_tensors(tmp_path / "lora.safetensors"), "The identity of mia", "Train it again.")
    nested = {768: ({"linear.0.weight": torch.ones(2)}, {"linear.0.weight": torch.tensor([float("inf")])})}
    torch.save(nested, tmp_path / "hypernetwork.pt")
    with pytest.raises(ModelError, match=r"768\.1\.linear\.0\.weight\). Train it again\."):
        check_finite(file_tensors(tmp_path / "hypernetwork.pt"), "The identity of mia", "Train it again.")
    module = torch.nn.Linear(2, 2)
    check_finite(module.named_parameters(), "A module", "-")  # finite: nothing to say
    with torch.no_grad():
        module.bias[0] = float("nan")
    with pytest.raises(ModelError, match=r"A module is damaged: .*\(bias\)"):
        check_finite(module.named_parameters(), "A module", "-")
    save_file({"steps": torch.tensor([3])}, tmp_path / "counts.safetensors")
    check_finite(file_tensors(tmp_path / "counts.safetensors"), "Counts", "-")  # whole numbers are never NaN


def test_a_file_cut_off_or_holding_code_is_named_as_damaged_without_torchs_advice(tmp_path):
    save_file({"weight": torch.ones(64, 64)}, tmp_path / "model.safetensors")
    assert damaged_file(tmp_path) is None
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])  # a download cut off
    assert "model.safetensors cannot be read: it is cut off or damaged" in damaged_file(tmp_path)
    with pytest.raises(ModelError, match="The encoder is damaged: .*cut off or damaged.*Download it again"):
        check_finite(file_tensors(tmp_path), "The encoder", "Download it again.")

    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))

    (tmp_path / "embedding.pt").write_bytes(pickle.dumps({"vectors": Payload()}, protocol=2))
    with pytest.raises(ModelError) as refused:
        check_finite(file_tensors(tmp_path / "embedding.pt"), "The identity of mia", "Train it again.")
    assert "holds more than plain weights" in str(refused.value) and "weights_only" not in str(refused.value)
