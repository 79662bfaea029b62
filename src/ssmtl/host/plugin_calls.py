"""Every call into plugin code goes through here, so a plugin's failure is one clear line.

A plugin is someone else's code running inside ssmtl: its factory, its ``forward``, its
dataset reader can raise anything. The user must learn *which* plugin failed and *where*
in one line, e.g.::

    error: task 'order' (package ssmtl-foo 0.1) failed in forward: ValueError: bad shape

and not a 40-frame traceback through ssmtl's engine. :func:`plugin_call` turns any
exception the plugin raises into a :class:`PluginCallError` (an ``SsmtlError``: the CLI
prints it as one line, exit 2) that keeps the original as ``__cause__``; ``ssmtl --debug``
or ``SSMTL_DEBUG=1`` prints that full traceback too. What the plugin raised on purpose
(an ``SsmtlError``: a bad file, a bad option) is passed through as the plugin wrote it.

:func:`checked_task_output` checks what a task's ``forward`` returned (a
:class:`~ssmtl.api.TaskOutput` whose loss is one finite-or-not floating number), and
:func:`checked_loss` what a task's or a head's loss is, so a wrong return value is named
here instead of failing later inside ``torch.stack``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from ssmtl.api.errors import SsmtlError
from ssmtl.api.tasks import TaskOutput

#: the registry's table of each plugin kind
_TABLES = {"task": "tasks", "dataset": "datasets", "head": "heads", "network": "networks"}


class PluginCallError(SsmtlError):
    """A plugin raised (or returned something it must not) in a named call."""

    def __init__(self, message: str, kind: str, name: str, call: str):
        super().__init__(message)
        self.kind, self.name, self.call = kind, name, call


def plugin_label(kind: str, name: str, registry: Any = None) -> str:
    """``task 'order' (package ssmtl-foo 0.1)``; the package is left out where the registry
    does not know it (a plugin registered in-process) or was not given."""
    label = f"{kind} {name!r}"
    table = _TABLES.get(kind, kind)
    for plugin in getattr(registry, "plugins", ()):
        if name in plugin.provides.get(table, ()):
            where = "built-in" if plugin.builtin else f"package {plugin.distribution} {plugin.version}".strip()
            return f"{label} ({where})"
    return label


def describe(exc: BaseException) -> str:
    """``ValueError: bad shape``: the exception's type and its first line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@contextmanager
def plugin_call(kind: str, name: str, call: str, registry: Any = None) -> Iterator[None]:
    """``with plugin_call("task", "order", "forward"): out = task(ctx)``: anything but an
    ``SsmtlError`` raised inside becomes one :class:`PluginCallError` naming the plugin."""
    try:
        yield
    except SsmtlError:
        raise  # the plugin's own clear message (or an inner plugin_call's)
    except Exception as exc:
        raise PluginCallError(f"{plugin_label(kind, name, registry)} failed in {call}: {describe(exc)}",
                              kind, name, call) from exc


def refuse(kind: str, name: str, call: str, problem: str, registry: Any = None) -> PluginCallError:
    """The error for a plugin whose call returned something it must not (raise it)."""
    return PluginCallError(f"{plugin_label(kind, name, registry)}: {call} {problem}", kind, name, call)


def checked_loss(kind: str, name: str, call: str, loss: Any, registry: Any = None) -> torch.Tensor:
    """A plugin's loss as a scalar tensor, or a :class:`PluginCallError` saying what is wrong with it.

    Tasks (``forward``'s ``TaskOutput.loss``) and heads (``loss``) both return one
    floating-point number; a one-element loss of shape ``(1,)`` is accepted as the scalar it is.
    """
    if not isinstance(loss, torch.Tensor):
        raise refuse(kind, name, call, f"returned a loss of type {type(loss).__name__}, expected a torch.Tensor", registry)
    if not loss.is_floating_point():
        raise refuse(kind, name, call, f"returned a loss of dtype {loss.dtype}, expected a floating-point tensor", registry)
    if loss.numel() != 1:
        raise refuse(kind, name, call, f"returned a loss of shape {tuple(loss.shape)}, expected one number (shape ())", registry)
    return loss.reshape(()) if loss.dim() != 0 else loss


def checked_task_output(name: str, out: Any, registry: Any = None) -> TaskOutput:
    """A task's ``forward`` result, or a :class:`PluginCallError` saying what is wrong with it."""
    if not isinstance(out, TaskOutput):
        raise refuse("task", name, "forward", f"returned {type(out).__name__}, expected a TaskOutput(loss=..., metrics={{...}})",
                     registry)
    loss = checked_loss("task", name, "forward", out.loss, registry)
    if not isinstance(out.metrics, dict) or not all(isinstance(v, torch.Tensor) for v in out.metrics.values()):
        raise refuse("task", name, "forward", "returned metrics that are not a dict of tensors", registry)
    return out if loss is out.loss else TaskOutput(loss, out.metrics)
