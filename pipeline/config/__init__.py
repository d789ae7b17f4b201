"""Configs: the typed schema (schema.py) and how a YAML file becomes one (loader.py)."""

from pipeline.config.loader import default_config_path, load_config
from pipeline.config.base import STAGES, ConfigError
from pipeline.config.schema import Config, LoraConfig, ModelConfig, TrainingConfig
from pipeline.config.slurm import SlurmConfig, SlurmResources

__all__ = ["STAGES", "Config", "ConfigError", "LoraConfig", "ModelConfig", "SlurmConfig", "SlurmResources", "TrainingConfig",
           "default_config_path", "load_config"]
