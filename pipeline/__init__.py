"""collapse-lab: a resumable pipeline for studying model collapse in language models."""

__version__ = "0.1.0"
