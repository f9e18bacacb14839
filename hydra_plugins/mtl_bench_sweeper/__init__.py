"""mtl_bench's Hydra sweeper plugin (Hydra discovers sweepers only inside the ``hydra_plugins`` namespace package)."""
