from mtl_bench.metrics.attributes import BinaryAttributeMetrics
from mtl_bench.metrics.base import Metric
from mtl_bench.metrics.delta_m import DeltaM, MetricContribution, STLBaselines, delta_m, metrics_for_split, stl_baselines_from_runs
from mtl_bench.metrics.depth import DepthMetrics
from mtl_bench.metrics.normals import NormalMetrics
from mtl_bench.metrics.regression import RegressionMetrics
from mtl_bench.metrics.segmentation import SegmentationMetrics

__all__ = [
    "BinaryAttributeMetrics",
    "DeltaM",
    "DepthMetrics",
    "Metric",
    "MetricContribution",
    "NormalMetrics",
    "RegressionMetrics",
    "STLBaselines",
    "SegmentationMetrics",
    "delta_m",
    "metrics_for_split",
    "stl_baselines_from_runs",
]
