"""The pytest fixtures of :mod:`ssmtl.testing` (registered through the ``pytest11`` entry point)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import pytest


#: the original low-variability phantom: every volume has exactly 8 slices of 32x32, so tests can count
TINY_CACHE = {"subjects": 4, "size": 32, "num_slices": 8, "variability": "low"}


@pytest.fixture
def ssmtl_plugin_manager():
    """A fresh pluggy ``PluginManager`` with the ssmtl hookspecs and no plugin registered."""
    from ssmtl.host.registry import new_plugin_manager

    return new_plugin_manager()


@pytest.fixture
def ssmtl_registry_factory() -> Callable[..., Any]:
    """``make(*plugins, builtins=(), strict=True) -> Registry``: a registry holding only these plugins.

    No third-party entry point is loaded, so what other packages are installed does
    not matter. ``builtins`` adds built-in plugins: ``True`` for all of them (the
    entry points of the installed ssmtl distribution), or module paths such as
    ``"ssmtl.plugins.tasks.contrastive"``. With ``strict`` (the default) any problem
    the registry reports (a rejected plugin, a duplicate name) fails the test with
    the registry's own message.
    """
    from ssmtl.host.registry import build_registry

    def make(*plugins: Any, builtins: bool | Iterable[str] = (), strict: bool = True):
        modules = None if builtins is True else (() if builtins is False else tuple(builtins))
        registry = build_registry(external=False, builtins=modules, extra=plugins)
        if strict and registry.problems:
            raise AssertionError("plugin registry problems:\n  " + "\n  ".join(registry.problems))
        return registry

    return make


@pytest.fixture(scope="session")
def ssmtl_tiny_cache(tmp_path_factory) -> Path:
    """A phantom slice cache built once per session: 4 CT subjects, 8 slices of 32x32."""
    from ssmtl.data.build import build_cache
    from ssmtl.data.preprocess import PreprocessConfig
    from ssmtl.host.registry import build_registry

    out = tmp_path_factory.mktemp("ssmtl_tiny_cache") / "phantom.h5"
    return build_cache(
        dataset="phantom",
        dataset_options=dict(TINY_CACHE),
        preprocess=PreprocessConfig(size=TINY_CACHE["size"]),
        out=out,
        registry=build_registry(external=False),
    )


@pytest.fixture
def ssmtl_cli():
    """An in-process ``ssmtl`` runner: ``ssmtl_cli("pretrain", "--data", path, ..., plugins=[plugin])``.

    See :class:`ssmtl.testing.cli.SsmtlCli`.
    """
    from ssmtl.testing.cli import SsmtlCli

    return SsmtlCli()


def cache_summary(path: Path) -> dict[str, Any]:
    """What ``ssmtl cache info --json`` reports about a cache: volumes, slices, slice
    shape, modalities, classes, split. For asserting on a cache a dataset plugin built."""
    from ssmtl.data.cache import SliceCache

    return SliceCache(Path(path)).summary()
