"""A scan prepared for whole-scan inference: resampled as the training cache, but not cropped.

The cache keeps a ``size x size`` centre crop of every slice at its spacing; a scan wider
than that field of view loses its edges there. ``ssmtl predict`` and evaluation at native
resolution instead preprocess the scan over its **whole** in-plane field of view at the
cache spacing (:func:`~ssmtl.data.preprocess.preprocess_volume` with
``field_of_view="whole"``) and predict it in sliding windows of the cache's slice size
(:class:`~ssmtl.downstream.predictor.Predictor`); the recorded transform of that grid maps
the prediction back to the scan exactly as before.

:func:`load_whole_scan` is what ``predict``'s workers run: a scan that cannot be read or
preprocessed, for whatever reason (a 1 x 1 x 1 volume, a reader's own exception), comes back
as a :class:`~ssmtl.data.ingest.Failure` naming it, so one bad scan never stops the others,
in this process or in a worker.
"""

from __future__ import annotations

import functools

from ssmtl.data.ingest import load_and_preprocess

#: ``load_whole_scan(item, preprocess)``: picklable, so predict's worker processes run it too
load_whole_scan = functools.partial(load_and_preprocess, field_of_view="whole", isolate=True)
