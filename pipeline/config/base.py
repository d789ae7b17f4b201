"""What every config section shares: the stage list, the base model (unknown keys are errors), the error."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from pipeline.errors import UserError

STAGES = ("prepare", "teacher", "generate", "mix", "train", "evaluate", "fit", "report")
StageName = Literal[STAGES]  # type: ignore[valid-type]  # derived from the one stage list


class ConfigError(UserError):
    """A config that does not validate; the message is one line."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)
