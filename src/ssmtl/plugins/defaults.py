"""The defaults: which built-ins a bare ``ssmtl`` command uses.

The one place that names built-in plugins for the rest of ssmtl. Core code asks the
registry (``registry.defaults``) and never spells a task or head name itself, so
these choices live beside the plugins they name, registered through the same
``ssmtl_defaults`` hook a third party would implement.

* Pre-training without ``--task`` runs the paper's pair: MoCo v2 instance
  discrimination (``contrastive``) and slice ordering (``order``).
* Fine-tuning without ``--head`` trains the ``segmentation`` head.
* Runs whose config names no network (``model.name``) train ssmtl's ``unet``; so do
  exports written before networks were plugins (their manifests name none).
* ``ssmtl benchmark --methods`` knows ``contrastive`` (MoCo v2 alone, the paper's
  baseline) and ``multitask`` (every sequential task of the paper at once); its
  default methods are ``scratch``, ``contrastive`` and ``multitask``.
"""

from __future__ import annotations

from ssmtl.api import DefaultsSpec, hookimpl

DEFAULTS = DefaultsSpec(
    tasks=("contrastive", "order"),
    head="segmentation",
    task_sets={
        "contrastive": ("contrastive",),
        "multitask": ("contrastive", "order", "position", "reconstruct", "neighbor"),
    },
    baseline="contrastive",
    network="unet",
)


@hookimpl
def ssmtl_defaults() -> DefaultsSpec:
    return DEFAULTS
