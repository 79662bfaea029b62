"""Class 2 of #15, the part about outputs: no weights holding NaN or Inf leave a run."""

from __future__ import annotations

import math

import pytest
import torch

from ssmtl.api.errors import SsmtlError
from ssmtl.training.export import EXPORT_DIR, write_export
from ssmtl.host.networks import build_network, network_config
from ssmtl.host.registry import build_registry


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_an_export_with_a_non_finite_tensor_is_never_written(tmp_path, bad):
    registry = build_registry(external=False)
    network = build_network(network_config({"base_channels": 4, "depth": 2}, registry), registry)
    name, tensor = next((k, t) for k, t in network.state_dict().items() if t.is_floating_point())
    with torch.no_grad():
        tensor.view(-1)[0] = bad
    with pytest.raises(SsmtlError, match=rf"hold NaN or Inf \(e.g. {name}\)"):
        write_export(tmp_path, network, {"steps": 1})
    assert list(tmp_path.iterdir()) == []  # no export/, no temporary

    with torch.no_grad():
        tensor.view(-1)[0] = 0.0
    write_export(tmp_path, network, {"steps": 1})
    assert sorted(p.name for p in (tmp_path / EXPORT_DIR).iterdir()) == ["encoder.safetensors", "manifest.json",
                                                                        "model.safetensors"]
