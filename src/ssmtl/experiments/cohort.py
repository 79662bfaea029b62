"""Who is who in a benchmark: the subjects pre-training reads, those it tests on, and the pool.

Pre-training reads the train subjects of ``data``; fine-tuning labels and tests subjects of
``finetune_data``. The caches may be the same file, different files of one cohort (CT for
pre-training, MR for fine-tuning), or the cohort plus a *pool*: unlabeled subjects that are
never labeled and never tested, the setting self-supervised pre-training is for. Subjects
are matched across caches by where their volumes came from (a volume's ``source``), not by
name: two phantom caches built with different seeds both name a subject ``phantom_ct_000``
and share none, and a cache set renames its subjects ``<cache>/<subject>``.

A test subject that pre-training would read is refused before anything runs: that
pre-training would be transductive.
"""

from __future__ import annotations

from typing import Any

from ssmtl.api.errors import SsmtlError
from ssmtl.data.splits import split_cache


def pretraining_volumes(cache, split: str, modality: str | None) -> list:
    """The volumes pre-training reads (as :func:`ssmtl.pretraining.engine.select_volumes` chooses them)."""
    return [v for v in cache.volumes if (not modality or v.modality == modality)
            and not (split == "train" and v.split in ("val", "test"))]


def finetune_split(ft_cache, split_seed: int, test_fraction: float, val_fraction: float) -> dict[str, Any]:
    """The fine-tuning cache's subject split, as every cell will draw it."""
    return split_cache(ft_cache, seed=split_seed, test_fraction=test_fraction, val_fraction=val_fraction)


def cohort_record(read: list, ft_cache, test_subjects: list[str]) -> dict[str, Any]:
    """Counts of the subjects pre-training reads: of the fine-tuning cohort, and from a pool.

    Raises when pre-training would read a volume of a test subject.
    """
    cohort = {v.source: v.subject for v in ft_cache.volumes if v.source}
    tested = set(test_subjects)
    leaked = sorted({cohort[v.source] for v in read if v.source in cohort and cohort[v.source] in tested})
    if leaked:
        raise SsmtlError(f"pre-training would read {len(leaked)} test subject(s) of the fine-tuning data (e.g. {leaked[0]}): "
                         "its results would be transductive; pre-train on the train subjects (pretrain.data.split=train) "
                         "or on other data")
    read_subjects = {v.subject for v in read}
    from_cohort = {v.subject for v in read if v.source in cohort}
    return {"subjects": len(read_subjects), "of_the_finetuning_cohort": len(from_cohort),
            "pool": len(read_subjects - from_cohort), "volumes": len(read)}
