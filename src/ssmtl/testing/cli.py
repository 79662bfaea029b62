"""Run the ``ssmtl`` command line in-process, isolated from the test session's state.

The CLI keeps process-wide state that would leak between invocations in one
pytest process: the registry is cached per process, ``--no-plugins`` is a
process-level setting, and plugin problems are printed once per process. :class:`SsmtlCli` resets all three around every call, and can
inject plugin objects that are importable but not installed, so a plugin's tests
can drive the real CLI before (or without) ``pip install``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterable, Iterator, Sequence
from unittest import mock

from click.testing import Result
from typer.testing import CliRunner

_ENV_KEYS = ("SSMTL_NO_PLUGINS", "SSMTL_PLUGINS")


class SsmtlCli:
    """``cli("plugins", "--json")`` runs ``ssmtl plugins --json`` and returns click's ``Result``.

    The result has ``exit_code``, ``stdout``, ``stderr`` (kept apart) and
    ``exception``. Unexpected exceptions propagate with their traceback unless
    ``catch_exceptions=True``; user errors exit with code 2 as they do in a shell.
    """

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(
        self,
        *args: Any,
        plugins: Sequence[Any] | None = None,
        builtins: bool | Iterable[str] = True,
        env: dict[str, str] | None = None,
        input: str | None = None,
        catch_exceptions: bool = False,
    ) -> Result:
        """Invoke ``ssmtl *args``.

        Args:
            plugins: plugin modules/objects to load *instead of* the installed entry
                points (next to the built-ins), e.g. ``[my_package.plugin]``.
                ``None`` discovers installed plugins as a real shell run does.
            builtins: with ``plugins``: load every built-in (True), none (False) or
                the given built-in module paths.
            env: extra environment variables for this call.
        """
        from ssmtl.cli.app import app

        with self.isolated(plugins, builtins):
            return self.runner.invoke(app, [str(a) for a in args], env=env, input=input, catch_exceptions=catch_exceptions)

    @contextlib.contextmanager
    def isolated(self, plugins: Sequence[Any] | None = None, builtins: bool | Iterable[str] = True) -> Iterator[None]:
        """Fresh registry, plugin warnings and plugin-selection environment for the duration.

        ``SSMTL_NO_PLUGINS`` and ``SSMTL_PLUGINS`` are unset during the call (pass
        them with ``env=`` to test them) and restored afterwards.
        """
        from ssmtl.cli import common
        from ssmtl.host import registry as registry_module

        # start from no plugin selection, whatever the test session set before
        saved = {key: os.environ.pop(key, None) for key in _ENV_KEYS}
        _reset(registry_module, common)
        patch = contextlib.nullcontext()
        if plugins is not None:
            patch = mock.patch.object(registry_module, "get_registry", _injected(registry_module, list(plugins), builtins))
        try:
            with patch:
                yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            _reset(registry_module, common)


def _reset(registry_module, common) -> None:
    registry_module._CACHE.clear()
    registry_module.set_default_external(None)
    if hasattr(common.registry, "_warned"):
        del common.registry._warned


def _injected(registry_module, plugins: list[Any], builtins: bool | Iterable[str]):
    """A stand-in for ``get_registry``: built-ins plus ``plugins``, no entry points."""
    modules = None if builtins is True else (() if builtins is False else tuple(builtins))  # None: every built-in

    def get_registry(external: bool | None = None):
        if external is None:
            external = registry_module._DEFAULT_EXTERNAL  # the CLI's --no-plugins
        disabled = os.environ.get(registry_module.DISABLE_ENV, "") not in ("", "0", "false")
        extra = () if disabled or external is False else plugins
        return registry_module.build_registry(external=False, builtins=modules, extra=extra)

    return get_registry
