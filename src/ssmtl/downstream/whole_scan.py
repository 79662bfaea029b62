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

from ssmtl.api.errors import InputFileError
from ssmtl.api.volumes import VolumeItem
from ssmtl.data.ingest import Failure, release_freed_memory
from ssmtl.data.preprocess import PreprocessConfig, preprocess_volume, ProcessedVolume
from ssmtl.host.plugin_calls import describe


def load_whole_scan(item: VolumeItem, preprocess: PreprocessConfig) -> ProcessedVolume | Failure:
    """Load ``item`` and preprocess its whole field of view; any failure is a :class:`Failure` naming the scan."""
    try:
        raw = item.load()
    except InputFileError as exc:
        return Failure(exc.path, exc.reason)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a reader's own error on a file another tool wrote: this scan's problem
        return Failure(item.source, f"cannot read it ({describe(exc)})", in_plugin=True)
    try:
        processed = preprocess_volume(raw, preprocess, source=item.source, field_of_view="whole")
    except InputFileError as exc:
        return Failure(exc.path, exc.reason)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # e.g. a degenerate 1 x 1 x 1 volume: this scan cannot be predicted, the others can
        return Failure(item.source, f"cannot preprocess it ({describe(exc)})")
    del raw
    release_freed_memory()
    return processed
