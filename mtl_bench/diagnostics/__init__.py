"""Training diagnostics that observe the per-task gradients the engine computes (AU task dominance; the
gradient-conflict probe)."""
