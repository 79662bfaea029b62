"""Networks are plugins: the built-in U-Net and MONAI BasicUNet, and any network a third party registers.

The ``model`` table is a union discriminated by ``model.name`` (no name: the default
network); the MONAI adapter's state dict is exactly ``BasicUNet``'s, so a pre-training
export loads into that very class with ``strict=True``; and a network registered through
``ssmtl_register_networks`` trains and exports like the built-ins.
"""

from __future__ import annotations

from ssmtl.host import registry as registry_module
from ssmtl.host.registry import get_registry

import json
from typing import Literal

import pytest
import torch
from pydantic import BaseModel, Field
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from ssmtl.api import ConfigError, NetworkConfig, NetworkInfo, NetworkOutput, NetworkSpec, SsmtlError, hookimpl
from ssmtl.training.export import load_pretrained_network, write_export
from ssmtl.host.networks import build_network, network_config
from ssmtl.host.registry import build_registry
from ssmtl.pretraining.config import resolve_pretrain_config

from helpers import ALL_TASKS, tiny_sets

MONAI = "monai-basic-unet"
TINY_MONAI = {"name": MONAI, "features": [4, 4, 8, 8, 16, 4]}


@pytest.fixture(scope="module")
def registry():
    return build_registry(external=False)


# -- a third-party network, registered in-process ------------------------------------------------


class PairConfig(NetworkConfig):
    """Two scales: a full-resolution conv and a strided one."""

    name: Literal["pair-net"] = "pair-net"
    width: int = Field(4, ge=1, description="Channels at full resolution.")


class PairEncoder(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.full = nn.Conv2d(1, width, 3, padding=1)
        self.coarse = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)

    def forward(self, x):
        full = F.relu(self.full(x))
        return [full, F.relu(self.coarse(full))]


class PairDecoder(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.merge = nn.Conv2d(3 * width, width, 3, padding=1)

    def forward(self, features):
        up = F.interpolate(features[1], size=features[0].shape[-2:])
        return self.merge(torch.cat([features[0], up], dim=1))


class PairNet(nn.Module):
    def __init__(self, config: PairConfig):
        super().__init__()
        self.config = config
        self.encoder = PairEncoder(config.width)
        self.decoder = PairDecoder(config.width)

    @property
    def info(self) -> NetworkInfo:
        w = self.config.width
        return NetworkInfo(in_channels=1, encoder_channels=(w, 2 * w), decoder_channels=w, depth=1)

    def forward(self, x):
        features = self.encoder(x)
        return NetworkOutput(encoder=features, decoder=self.decoder(features))


class PairPlugin:
    __name__ = "pair_plugin"

    @hookimpl
    def ssmtl_register_networks(self):
        return [NetworkSpec.of(PairConfig, PairNet, "two scales, for tests")]


# -- registration and the model table ------------------------------------------------------------


def test_builtin_networks_and_the_default(registry):
    assert set(registry.networks) == {"unet", MONAI}
    assert registry.defaults.network == registry.default_network() == "unet"
    provided = {p.name: p.provides for p in registry.plugins if "networks" in p.provides}
    assert provided == {"ssmtl.plugins.networks.unet": {"networks": ["unet"]},
                        "ssmtl.plugins.networks.monai_unet": {"networks": [MONAI]}}


def test_a_model_table_without_a_name_is_the_default_network(registry):
    config = resolve_pretrain_config(sets=["model.base_channels=8"], environ={}, registry=registry)
    assert config.model.name == "unet" and config.model.base_channels == 8
    assert config.model_dump(mode="json")["model"]["name"] == "unet"  # saved runs name their network
    monai = resolve_pretrain_config(sets=[f"model.name={MONAI}", "model.features=[4, 4, 8, 8, 16, 4]"], environ={}, registry=registry)
    assert type(monai.model).__name__ == "MonaiBasicUNetConfig" and monai.model.features == (4, 4, 8, 8, 16, 4)
    # a saved config.json reads back to the same network config
    again = resolve_pretrain_config(flags={"model": monai.model_dump(mode="json")["model"]}, environ={}, registry=registry)
    assert again.model == monai.model


@pytest.mark.parametrize("sets,row", [
    (["model.name=no-such-net"], ("model.name", "unknown network 'no-such-net'; available: monai-basic-unet, unet")),
    ([f"model.name={MONAI}", "model.base_channels=8"], ("model.base_channels", "Extra inputs are not permitted (got 8)")),
    (["model.base_channels=1"], ("model.base_channels", "Input should be greater than or equal to 2 (got 1)")),
])
def test_bad_network_options_are_named(registry, sets, row):
    with pytest.raises(ConfigError) as info:
        resolve_pretrain_config(sets=sets, environ={}, registry=registry)
    assert info.value.rows == [row]


def test_a_registry_without_defaults_asks_for_a_network_name():
    bare = build_registry(external=False, builtins=["ssmtl.plugins.networks.unet"])
    with pytest.raises(ConfigError, match="model.name: no default network"):
        network_config({"base_channels": 8}, bare)
    assert network_config({"name": "unet", "base_channels": 8}, bare).base_channels == 8


def test_a_network_spec_must_use_a_network_config(ssmtl_registry_factory):
    class PlainConfig(BaseModel):
        name: str = "plain-net"

    class BadPlugin:
        __name__ = "bad_net_plugin"

        @hookimpl
        def ssmtl_register_networks(self):
            return [NetworkSpec("plain-net", PlainConfig, PairNet)]

    registry = ssmtl_registry_factory(BadPlugin(), strict=False)
    assert registry.networks == {}
    assert registry.problems == ["plugin 'bad_net_plugin' from (in-process) skipped: TypeError: "
                                 "NetworkSpec 'plain-net': config_model must subclass NetworkConfig"]


def test_a_factory_that_breaks_the_contract_is_named(ssmtl_registry_factory):
    class NoDecoder(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config, self.encoder = config, nn.Identity()

    class Plugin:
        __name__ = "no_decoder_plugin"

        @hookimpl
        def ssmtl_register_networks(self):
            return [NetworkSpec.of(PairConfig, NoDecoder)]

    registry = ssmtl_registry_factory(Plugin())
    with pytest.raises(SsmtlError, match="network 'pair-net': the factory returned a module without a `decoder` module"):
        build_network(PairConfig(), registry)


def test_a_third_party_network_trains_and_exports(ssmtl_cli, ssmtl_tiny_cache, tmp_path):
    out = tmp_path / "pre"
    result = ssmtl_cli("pretrain", "--data", ssmtl_tiny_cache, "--out", out, "--steps", "2", "--batch-size", "2",
                       "--set", "model.name=pair-net", "--set", "model.width=3", "--set", "tasks.contrastive.queue_size=16",
                       "--workers", "0", plugins=[PairPlugin()])
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    assert manifest["model"] == {"name": "pair-net", "width": 3} and "native_class" not in manifest
    with ssmtl_cli.isolated(plugins=[PairPlugin()]):
        network, _ = load_pretrained_network(out, registry_module.get_registry())
    assert isinstance(network, PairNet) and network.encoder.coarse.weight.shape == (6, 3, 3, 3)
    listing = ssmtl_cli("plugins", "--json", plugins=[PairPlugin()])
    [plugin] = [p for p in json.loads(listing.stdout)["plugins"] if p["name"] == "pair_plugin"]
    assert plugin["provides"] == {"networks": ["pair-net"]} and plugin["hooks"] == ["ssmtl_register_networks"]


# -- the U-Net: exports from before networks were plugins -----------------------------------------


def test_an_export_whose_manifest_names_no_network_loads_as_the_unet(registry, tmp_path):
    torch.manual_seed(0)
    network = build_network(network_config({"base_channels": 4, "depth": 2}, registry), registry)
    write_export(tmp_path, network, {"tasks": {}, "steps": 1})
    manifest_path = tmp_path / "export" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["model"]["name"]  # as written before networks were plugins
    manifest_path.write_text(json.dumps(manifest))
    loaded, _ = load_pretrained_network(tmp_path, registry)
    assert loaded.config.name == "unet" and loaded.config.base_channels == 4
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


# -- the MONAI adapter -----------------------------------------------------------------------------


def test_the_monai_network_is_a_basicunet_with_views_over_its_stages(registry):
    from monai.networks.nets import BasicUNet

    torch.manual_seed(0)
    network = build_network(network_config(TINY_MONAI, registry), registry)
    native = network.native_class()
    assert native.path == "monai.networks.nets.BasicUNet"
    reference = BasicUNet(**native.kwargs)
    assert list(reference.state_dict()) == list(network.state_dict())  # the same keys, in the same order
    reference.load_state_dict(network.state_dict(), strict=True)
    x = torch.randn(2, 1, 32, 32)
    network.eval(), reference.eval()
    out = network(x)
    assert [f.shape[1:] for f in out.encoder] == [(4, 32, 32), (4, 16, 16), (8, 8, 8), (8, 4, 4), (16, 2, 2)]
    torch.testing.assert_close(reference(x), network.final_conv(out.decoder), rtol=0, atol=0)
    assert network.info == NetworkInfo(in_channels=1, encoder_channels=(4, 4, 8, 8, 16), decoder_channels=4, depth=4)
    # encoder and decoder hold every trainable parameter, each once; final_conv is frozen
    trainable = {id(p) for p in network.parameters() if p.requires_grad}
    parts = [id(p) for part in (network.encoder, network.decoder) for p in part.parameters()]
    assert sorted(parts) == sorted(trainable) and len(set(parts)) == len(parts)
    assert not any(p.requires_grad for p in network.final_conv.parameters())


def test_the_key_encoder_of_moco_is_an_independent_copy_that_follows_the_ema(registry):
    spec = registry.task("contrastive")
    network = build_network(network_config(TINY_MONAI, registry), registry)
    task = spec.factory(spec.config_model(momentum=0.75, queue_size=8), network.info)
    task.setup(network)
    assert type(task.key_encoder) is type(network.encoder)
    online = [p.detach().clone() for p in network.encoder.parameters()]
    before = [p.detach().clone() for p in task.key_encoder.parameters()]
    with torch.no_grad():
        for p in network.encoder.parameters():
            p.add_(1.0)
    task.after_optimizer_step(network, 0)
    for key, start, query in zip(task.key_encoder.parameters(), before, online):
        torch.testing.assert_close(key, 0.75 * start + 0.25 * (query + 1.0))
    assert all(torch.equal(p, q + 1.0) for p, q in zip(network.encoder.parameters(), online))  # the online encoder untouched


@pytest.mark.slow
def test_monai_pretraining_with_every_task_exports_basicunet_weights(ssmtl_cli, ssmtl_tiny_cache, tmp_path):
    from monai.networks.nets import BasicUNet

    out = tmp_path / "pre"
    sets = [s for s in tiny_sets(ALL_TASKS) if not s.startswith("model.")]
    args = ["pretrain", "--data", ssmtl_tiny_cache, "--out", out, "--steps", "2", "--batch-size", "2",
            "--set", f"model.name={MONAI}", "--set", "model.features=[4, 4, 8, 8, 16, 4]"]
    for task in ALL_TASKS:
        args += ["--task", task]
    for item in sets:
        args += ["--set", item]
    result = ssmtl_cli(*args)
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert set(records[-1]["tasks"]) == set(ALL_TASKS)
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    net = BasicUNet(**manifest["native_class"]["kwargs"])
    weights = load_file(out / "export" / "model.safetensors")
    net.load_state_dict(weights, strict=True)
    torch.manual_seed(0)  # the run's seed: its initial weights
    start = build_network(network_config(TINY_MONAI, get_registry()), get_registry()).state_dict()
    assert all(not torch.equal(weights[k], start[k]) for k in weights if k.endswith("conv.weight") and not k.startswith("final_conv"))
    assert all(torch.equal(weights[k], start[k]) for k in weights if k.startswith("final_conv"))  # never trained
