"""``ssmtl.export(...)``, ``ssmtl.report(...)`` and ``ssmtl.load_network(...)``: what leaves a
run, from Python, with the parameters of ``ssmtl export`` and ``ssmtl report``.

Like the other Python API modules (:mod:`ssmtl.pretraining.python_api`,
:mod:`ssmtl.downstream.python_api`), this is where a call without a ``registry`` gets the
process's plugins (:func:`~ssmtl.host.registry.get_registry`, as the command line loads
them); everything below takes the registry it is given.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ssmtl.host import registry as plugin_registry
from ssmtl.host.registry import Registry
from ssmtl.publish.hub import export_and_push, HubExport
from ssmtl.publish.report import write_report
from ssmtl.publish.runs import load_network as load_run_network


def export(run: str | Path, format: str = "safetensors", *, part: str | None = None, out: str | Path | None = None,
           size: int | None = None, force: bool = False, license: str | None = None, push_to_hub: str | None = None,
           private: bool = False, identify_subjects: bool = False, registry: Registry | None = None) -> HubExport:
    """Export a run's weights as a model-hub folder, as ``ssmtl export RUN`` does.

    Args:
        run: a pre-training or fine-tuning run directory.
        format: ``safetensors`` (weights), ``torchscript`` (``model.pt``), ``onnx``
            (``model.onnx``; needs ``pip install 'ssmtl[onnx]'``) or ``monai-bundle`` (a MONAI
            bundle of a fine-tuning run: ``configs/inference.json`` segments NIfTI scans).
        part: ``encoder``, ``network`` (encoder + decoder) or ``finetuned`` (network + head);
            default: ``network`` for a pre-training run, ``finetuned`` for a fine-tuning run.
        out: the output folder (default ``RUN/hub/PART-FORMAT``).
        size: the slice size traced formats are built and checked at (default: the size the run
            was trained at).
        force: replace an earlier export folder (never anything else).
        license: a Hugging Face hub license identifier for the card (default: not set; the
            folder's LICENSE says what to decide).
        push_to_hub: ``OWNER/NAME``: upload the folder to the Hugging Face hub afterwards (needs
            ``pip install 'ssmtl[hub]'`` and a token); checked before anything is written.
        private: create the hub repository private.
        identify_subjects: name subjects by their real ids in the model card, for internal use
            (default: pseudonyms such as ``subject-007``); refused with ``push_to_hub``.
        registry: the plugins to rebuild the network with (default: the installed ones).

    Returns:
        a :class:`~ssmtl.publish.hub.HubExport` (``path``, ``part``, ``format``, ``files``, ``parity``,
        ``pushed_to``).

    Raises:
        SsmtlError: a bad run, option or output folder; weights holding NaN or Inf; a push
            that cannot be made.
    """
    return export_and_push(Path(run), format, part=part, out=None if out is None else Path(out), size=size, force=force,
                           license=license, push_to_hub=push_to_hub, private=private, identify_subjects=identify_subjects,
                           registry=registry or plugin_registry.get_registry())


def report(run: str | Path, out: str | Path | None = None, *, identify_subjects: bool = False,
           registry: Registry | None = None) -> Path:
    """Write one self-contained HTML page about a run or a benchmark, as ``ssmtl report RUN`` does.

    Args:
        run: a pre-training run, a fine-tuning run or a benchmark directory.
        out: the HTML file (default ``RUN/report.html``).
        identify_subjects: name subjects and volumes by their real ids, for internal use
            (default: pseudonyms such as ``subject-007``, so the page can be shared).
        registry: the plugins to rebuild the network with (default: the installed ones).

    Returns:
        the path of the page written.

    Raises:
        SsmtlError: not a run or benchmark directory, or an unreadable run.
    """
    return write_report(run, out, registry=registry or plugin_registry.get_registry(), identify_subjects=identify_subjects)


def load_network(run: str | Path, *, registry: Registry | None = None) -> nn.Module:
    """The trained module of a run, in eval mode.

    Args:
        run: a pre-training run (its shared network: ``forward(images) -> NetworkOutput``) or a
            fine-tuning run (network + head: ``forward(images) -> logits (N, classes, H, W)``).
        registry: the plugins to rebuild the network with (default: the installed ones).

    Returns:
        the ``torch.nn.Module``, weights loaded with ``strict=True``.

    Raises:
        SsmtlError: not a finished run, or weights that do not match its records.
    """
    return load_run_network(Path(run), registry or plugin_registry.get_registry())
