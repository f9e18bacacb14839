from mtl_bench.metrics.base import Metric
from mtl_bench.metrics.regression import RegressionMetrics

__all__ = ["Metric", "RegressionMetrics"]
