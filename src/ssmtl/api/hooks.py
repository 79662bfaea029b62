"""The ssmtl hook specifications.

A plugin is any module or object with functions decorated by :data:`hookimpl`
whose names match the specs below. Built-in tasks, datasets, heads and networks use
these same hooks; third-party packages expose their module under the ``ssmtl``
entry-point group::

    [project.entry-points.ssmtl]
    my_plugin = "my_package.plugin"

Every registration hook returns a list of typed specs, and ``ssmtl_defaults`` one
spec (see :mod:`ssmtl.api.specs`). The registry calls each plugin's hooks through
pluggy, so ``@hookimpl(specname=...)``, ``tryfirst``/``trylast`` and wrappers work as
pluggy documents them, within that plugin.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "ssmtl"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def ssmtl_register_tasks():
    """Return a list of :class:`~ssmtl.api.specs.TaskSpec`: the pretext tasks this plugin provides.

    Each spec names the task (the value of ``--task``), its pydantic config model
    (a subclass of :class:`~ssmtl.api.configs.TaskConfig`) and a factory that builds the
    :class:`~ssmtl.api.tasks.PretextTask` module from a validated config and the
    shared network's :class:`~ssmtl.api.network.NetworkInfo`.
    """


@hookspec
def ssmtl_register_datasets():
    """Return a list of :class:`~ssmtl.api.specs.DatasetSpec`: volume sources for ``ssmtl cache build``.

    A dataset reads volumes (files, a generator, a database...) and hands them to the
    cache builder, which reorients, resamples, normalises and writes them to HDF5.
    """


@hookspec
def ssmtl_register_heads():
    """Return a list of :class:`~ssmtl.api.specs.HeadSpec`: downstream heads for ``ssmtl finetune``.

    A head is a module on top of the pre-trained network that owns its own loss and
    its own prediction, e.g. the built-in ``segmentation`` head (1x1 conv, Dice+CE).
    """


@hookspec
def ssmtl_register_networks():
    """Return a list of :class:`~ssmtl.api.specs.NetworkSpec`: shared encoder-decoders (``model.name``).

    A network plugin says how to produce what tasks and heads consume: encoder
    features at every scale (full resolution first) and full-resolution decoder
    features. The built-in ``unet`` is ssmtl's own U-Net; ``monai-basic-unet`` wraps
    MONAI's ``BasicUNet``, so its weights load into that very class.
    """


@hookspec
def ssmtl_defaults():
    """Return a :class:`~ssmtl.api.specs.DefaultsSpec`: what runs use when the user names nothing.

    The default pretext tasks of ``ssmtl pretrain``, the default head of ``ssmtl
    finetune`` and the named task sets of ``ssmtl benchmark --methods``. One plugin
    provides them: the built-in ``ssmtl.plugins.defaults``. Another plugin's defaults
    are rejected like a duplicate name, so what a bare command does never depends on
    what else is installed.
    """
