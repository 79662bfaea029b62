"""The shared network of a run: its config resolved through the network plugins, then built.

A run's ``model`` table is a union discriminated by ``model.name``: each network
plugin (``ssmtl_register_networks``) brings its own pydantic model, and
:func:`resolve_network_config` validates the table with the model of the network it
names. A table without ``name`` is the plugins' default network
(``DefaultsSpec.network``, the built-in U-Net): ``--set model.base_channels=8`` keeps
working, and so do configs and export manifests written before networks were
plugins, which name none. As for tasks, the resolution happens in a
``mode="before"`` validator, so the run configs stay static, picklable classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from pydantic import BaseModel, ValidationError

from ssmtl.api.errors import ConfigError, SsmtlError
from ssmtl.api.configs import NetworkConfig
from ssmtl.settings.sources import error_rows, summary

if TYPE_CHECKING:
    from torch import nn

    from ssmtl.api.network import NativeClass


def context_registry(info: Any) -> Any:
    """The plugin registry a pydantic validator was given (``context={"registry": ...}``).

    Configs whose tables name plugins (``model.name``, the tasks) are validated against the
    registry of the command or Python API call that validates them; there is no process-wide
    fallback, so a config never resolves against plugins its caller did not load."""
    registry = (getattr(info, "context", None) or {}).get("registry")
    if registry is None:
        raise ValueError("needs the plugin registry to resolve plugin names: validate with "
                         "context={'registry': registry} (resolve_pretrain_config / resolve_finetune_config do)")
    return registry


def resolve_network_config(value: Any, registry, prefix: str = "model") -> tuple[NetworkConfig | None, list[tuple[str, str]]]:
    """Validate a ``model`` table (a dict, or a config) with its network's config model: ``(config, error rows)``."""
    if isinstance(value, NetworkConfig) and value.name in registry.networks \
            and isinstance(value, registry.networks[value.name].config_model):
        return value, []
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if value is not None and not isinstance(value, Mapping):
        return None, [(prefix, f"expected a table of network options, got {value!r}")]
    data = dict(value or {})
    try:
        name = data.get("name") or registry.default_network()
    except SsmtlError as exc:
        return None, [(f"{prefix}.name", str(exc))]
    if name not in registry.networks:
        available = ", ".join(sorted(registry.networks)) or "none"
        return None, [(f"{prefix}.name", f"unknown network {name!r}; available: {available}")]
    data["name"] = name
    try:
        return registry.networks[name].config_model.model_validate(data), []
    except ValidationError as exc:
        return None, error_rows(exc, prefix=prefix)


def network_config(value: Any, registry, prefix: str = "model") -> NetworkConfig:
    """:func:`resolve_network_config`, raising :class:`ConfigError` with one row per problem."""
    config, rows = resolve_network_config(value, registry, prefix)
    if rows:
        raise ConfigError(summary(rows), rows)
    return config


def validate_network_field(value: Any, registry) -> NetworkConfig:
    """For a pydantic ``mode="before"`` validator: the resolved config, or a ``ValueError``."""
    config, rows = resolve_network_config(value, registry)
    if rows:
        raise ValueError("; ".join(f"{loc}: {msg}" for loc, msg in rows))
    return config


def build_network(config: NetworkConfig, registry) -> "nn.Module":
    """The network plugin's module for ``config``, checked against the network contract."""
    from torch import nn  # here, not at the top: resolving a config must not import torch

    from ssmtl.api.network import NetworkInfo
    from ssmtl.host.plugin_calls import plugin_call

    spec = registry.network(config.name)
    with plugin_call("network", config.name, "its factory (build)", registry):
        network = spec.factory(config)
    what = f"network {config.name!r}: the factory returned"
    if not isinstance(network, nn.Module):
        raise SsmtlError(f"{what} {type(network).__name__}, not a torch.nn.Module")
    for article, part in (("an", "encoder"), ("a", "decoder")):
        if not isinstance(getattr(network, part, None), nn.Module):
            raise SsmtlError(f"{what} a module without {article} `{part}` module")
    if not isinstance(getattr(network, "info", None), NetworkInfo):
        raise SsmtlError(f"{what} a module whose `info` is not a NetworkInfo")
    if not isinstance(getattr(network, "config", None), NetworkConfig):
        raise SsmtlError(f"{what} a module whose `config` is not its NetworkConfig")
    return network


def native_class(network: "nn.Module") -> "NativeClass | None":
    """The class outside ssmtl that loads ``network``'s state dict, if its plugin names one."""
    describe = getattr(network, "native_class", None)
    return describe() if callable(describe) else None


def network_models(registry) -> list[type[NetworkConfig]]:
    """Every registered network's config model (for the JSON Schema of a run config)."""
    return [spec.config_model for spec in registry.networks.values()]
