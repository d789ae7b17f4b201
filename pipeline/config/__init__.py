"""Configs: the typed schema (schema.py) and how a YAML file becomes one (loader.py)."""

from pipeline.config.loader import default_config_path, load_config
from pipeline.config.schema import (
    STAGES,
    Config,
    ConfigError,
    LoraConfig,
    ModelConfig,
    SlurmResources,
    TrainingConfig,
)

__all__ = ["STAGES", "Config", "ConfigError", "LoraConfig", "ModelConfig", "SlurmResources", "TrainingConfig",
           "default_config_path", "load_config"]
