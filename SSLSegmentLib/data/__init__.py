"""Data access: image/label files with their geometry, datasets of cases, classes by name."""

from .cases import (Case, Dataset, case_name, discover_dataset, list_image_cases, list_image_files, load_dataset_json,
                    load_labelled_case, resolve_classes)
from .geometry import Geometry
from .io import IMAGE_EXTENSIONS, read_image, write_image
from .labels import ClassInfo, LabelFile, default_color, read_label, write_labelmap, write_segmentation

__all__ = [
    "Case", "ClassInfo", "Dataset", "Geometry", "IMAGE_EXTENSIONS", "LabelFile", "case_name", "default_color",
    "discover_dataset", "list_image_cases", "list_image_files", "load_dataset_json", "load_labelled_case", "read_image",
    "read_label", "resolve_classes", "write_image", "write_labelmap", "write_segmentation",
]
