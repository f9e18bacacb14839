from mtl_bench.loggers.run_logger import RunLogger, WandbSettings, resolve_wandb_mode

__all__ = ["RunLogger", "WandbSettings", "resolve_wandb_mode"]
