"""Structured-config schemas (registered in Hydra's ConfigStore on import) and value validation."""
