"""WMH-challenge evaluation: overlap, HD95, lesion detection, AVD, calibration and uncertainty metrics."""
from nnunet_pdddpm.evaluation.calibration import (
    brier_score,
    expected_calibration_error,
    mean_uncertainty,
    uncertainty_auroc,
)
from nnunet_pdddpm.evaluation.case_metrics import evaluate_case
from nnunet_pdddpm.evaluation.evaluate_folder import evaluate_folders
from nnunet_pdddpm.evaluation.lesions import (
    avd,
    connected_components,
    lesion_f1,
    lesion_metrics,
    lesion_precision,
    lesion_recall,
)
from nnunet_pdddpm.evaluation.overlap import dice, jaccard, voxel_f1
from nnunet_pdddpm.evaluation.surface import Geometry, boundary, boundary_points, hd95

__all__ = [
    "Geometry",
    "avd",
    "boundary",
    "boundary_points",
    "brier_score",
    "connected_components",
    "dice",
    "evaluate_case",
    "evaluate_folders",
    "expected_calibration_error",
    "hd95",
    "jaccard",
    "lesion_f1",
    "lesion_metrics",
    "lesion_precision",
    "lesion_recall",
    "mean_uncertainty",
    "uncertainty_auroc",
    "voxel_f1",
]
