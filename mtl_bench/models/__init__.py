from mtl_bench.models.mtl_model import MultiTaskModel, build_model

__all__ = ["MultiTaskModel", "build_model"]
