"""The dataset toolkit: what every file-based dataset plugin needs, public and documented.

The built-in dataset plugins use only these names (through :mod:`ssmtl.api`), exactly
as a third-party dataset would. One module per concept:

* :mod:`~ssmtl.api.datasets.arrays`: the cache's array layout, finite voxels;
* :mod:`~ssmtl.api.datasets.limits`: a header's claimed size against the file, before allocating;
* :mod:`~ssmtl.api.datasets.files`: folders, hidden files, extensions and stems;
* :mod:`~ssmtl.api.datasets.pairing`: images paired with label maps by name, subjects;
* :mod:`~ssmtl.api.datasets.labels`: raw label values -> class ids, class names;
* :mod:`~ssmtl.api.datasets.grids`: 3D shapes, a label on its image's grid;
* :mod:`~ssmtl.api.datasets.orientation`: geometry -> affine, LPS -> RAS, canonical reorientation;
* :mod:`~ssmtl.api.datasets.modality`: CT or MR from the intensities;
* :mod:`~ssmtl.api.datasets.config`: the ``LabeledDatasetConfig`` and ``FolderDatasetConfig`` bases;
* :mod:`~ssmtl.api.datasets.sources`: the ``ImageLabelItem`` volume and ``folder_source``.

None of them imports nibabel, SimpleITK or pydicom when it is imported.
"""
