"""Evaluation of predicted segmentations: per-case metrics and folder summaries.

:mod:`.metrics` holds the pure metric functions and their conventions; :mod:`.evaluate` pairs the
files of two folders, runs the metrics in parallel and writes ``summary.json`` / ``summary.csv``.
"""

from autoseg.evaluation.evaluate import (
    EvaluationError,
    EvaluationSummary,
    evaluate_folders,
    print_summary,
    summary_table,
)
from autoseg.evaluation.metrics import (
    DEFAULT_TOLERANCE_MM,
    LabelMetrics,
    MeanMetrics,
    case_metrics,
    evaluation_targets,
    label_metrics,
)

__all__ = [
    "DEFAULT_TOLERANCE_MM",
    "EvaluationError",
    "EvaluationSummary",
    "LabelMetrics",
    "MeanMetrics",
    "case_metrics",
    "evaluate_folders",
    "evaluation_targets",
    "label_metrics",
    "print_summary",
    "summary_table",
]
