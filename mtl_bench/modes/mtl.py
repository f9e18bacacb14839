"""``mode=mtl``: multi-task learning on every task of the dataset (or ``mode.tasks``), all of them targets."""

from mtl_bench.modes.base import Mode, register_mode


@register_mode("mtl")
class MTLMode(Mode):
    pass
