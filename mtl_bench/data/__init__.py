from mtl_bench.data.base import Benchmark, TensorDictDataset, make_loader

__all__ = ["Benchmark", "TensorDictDataset", "make_loader"]
