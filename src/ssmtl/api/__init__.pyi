"""The public names of :mod:`ssmtl.api`, listed once.

Type checkers read this stub; at run time :mod:`ssmtl.api` reads it too, to load each name from
its module on first use (:mod:`ssmtl.api._lazy`). A new public name is one line here.
"""

from ssmtl.api.hooks import (
    hookimpl as hookimpl,
    hookspec as hookspec,
)
from ssmtl.api.errors import (
    ConfigError as ConfigError,
    InputFileError as InputFileError,
    SsmtlError as SsmtlError,
)
from ssmtl.api.rules import (
    CONFIG_RULES as CONFIG_RULES,
    MAX_SEED as MAX_SEED,
    AbsolutePath as AbsolutePath,
    Seed as Seed,
)
from ssmtl.api.geometry import (
    apply_affine as apply_affine,
    correspondence as correspondence,
)
from ssmtl.api.configs import (
    TaskConfig as TaskConfig,
    NetworkConfig as NetworkConfig,
    HeadConfig as HeadConfig,
)
from ssmtl.api.heads import (
    DownstreamHead as DownstreamHead,
)
from ssmtl.api.network import (
    NativeClass as NativeClass,
    NetworkInfo as NetworkInfo,
    NetworkOutput as NetworkOutput,
    SharedNetwork as SharedNetwork,
    global_pool as global_pool,
)
from ssmtl.api.specs import (
    DatasetSpec as DatasetSpec,
    DefaultsSpec as DefaultsSpec,
    HeadSpec as HeadSpec,
    NetworkSpec as NetworkSpec,
    TaskSpec as TaskSpec,
)
from ssmtl.api.tasks import (
    DataInfo as DataInfo,
    PretextTask as PretextTask,
    TaskOutput as TaskOutput,
)
from ssmtl.api.views import (
    BUILTIN_VIEWS as BUILTIN_VIEWS,
    SequenceBatch as SequenceBatch,
    StepContext as StepContext,
    View as View,
)
from ssmtl.api.volumes import (
    SLICE_AXES as SLICE_AXES,
    SPLITS as SPLITS,
    DatasetConfig as DatasetConfig,
    check_flip_axes as check_flip_axes,
    Modality as Modality,
    RawVolume as RawVolume,
    SourceGeometry as SourceGeometry,
    VolumeItem as VolumeItem,
    VolumeSource as VolumeSource,
)
from ssmtl.api.datasets.arrays import (
    check_finite as check_finite,
    check_real as check_real,
    from_slices as from_slices,
    to_slices as to_slices,
)
from ssmtl.api.datasets.limits import (
    DEFAULT_MAX_VOXELS as DEFAULT_MAX_VOXELS,
    MAX_VOXELS_ENV as MAX_VOXELS_ENV,
    check_claimed_size as check_claimed_size,
    max_voxels as max_voxels,
)
from ssmtl.api.datasets.config import (
    FolderDatasetConfig as FolderDatasetConfig,
    LabeledDatasetConfig as LabeledDatasetConfig,
)
from ssmtl.api.datasets.files import (
    FileKind as FileKind,
    check_directory as check_directory,
    check_regular_file as check_regular_file,
    file_kind as file_kind,
    is_hidden as is_hidden,
    read_regular_file as read_regular_file,
    real_path as real_path,
    walk_files as walk_files,
)
from ssmtl.api.structured import (
    CONFIG_LIMITS as CONFIG_LIMITS,
    MANIFEST_LIMITS as MANIFEST_LIMITS,
    TextLimits as TextLimits,
    parse_text as parse_text,
    read_csv as read_csv,
    read_document as read_document,
    read_text as read_text,
)
from ssmtl.api.datasets.grids import (
    AFFINE_TOLERANCE_MM as AFFINE_TOLERANCE_MM,
    check_same_grid as check_same_grid,
    spatial_shape as spatial_shape,
)
from ssmtl.api.datasets.labels import (
    MAX_CLASSES as MAX_CLASSES,
    LabelReader as LabelReader,
    check_class_names as check_class_names,
    check_label_values as check_label_values,
    class_name_table as class_name_table,
    collect_label_values as collect_label_values,
    integer_labels as integer_labels,
    map_labels as map_labels,
)
from ssmtl.api.datasets.modality import (
    CT_DETECTION_PERCENTILE as CT_DETECTION_PERCENTILE,
    CT_DETECTION_THRESHOLD as CT_DETECTION_THRESHOLD,
    detect_modality as detect_modality,
)
from ssmtl.api.datasets.orientation import (
    LPS_TO_RAS as LPS_TO_RAS,
    affine_from_geometry as affine_from_geometry,
    check_affine as check_affine,
    lps_to_canonical as lps_to_canonical,
    to_canonical as to_canonical,
)
from ssmtl.api.datasets.pairing import (
    CHANNEL_SUFFIX as CHANNEL_SUFFIX,
    split_channel as split_channel,
    channel_cases as channel_cases,
    image_cases as image_cases,
    IMAGE_SUFFIX as IMAGE_SUFFIX,
    LABEL_SUFFIX as LABEL_SUFFIX,
    LabelIndex as LabelIndex,
    image_key as image_key,
    label_key as label_key,
    pair_files as pair_files,
    split_same_folder as split_same_folder,
    subject_name as subject_name,
    unique_subjects as unique_subjects,
)
from ssmtl.api.datasets.sources import (
    ImageLabelItem as ImageLabelItem,
    folder_source as folder_source,
)
