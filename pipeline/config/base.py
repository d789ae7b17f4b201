"""What every config section shares: the stage list, the base model (unknown keys are errors), the error."""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from pipeline.errors import UserError

STAGES = ("prepare", "teacher", "generate", "mix", "train", "evaluate", "fit", "report")
StageName = Literal[STAGES]  # type: ignore[valid-type]  # derived from the one stage list


class ConfigError(UserError):
    """A config that does not validate; the message is one line."""


class Section(BaseModel):
    # allow_inf_nan=False: every float of a config is finite (an `.inf` epoch count would fail mid-run).
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic takes True for 1 in an int or float field; `seeds: [true]` is a mistake, not seed 1."""
        items = value if isinstance(value, list) else [value]
        if any(isinstance(item, bool) for item in items) and _takes_numbers_only(cls.model_fields[info.field_name].annotation):
            raise ValueError("a boolean (true/false) is not a number; give a number")
        return value


def _takes_numbers_only(annotation: Any) -> bool:
    """Whether a field's type takes numbers (int or float: bare, optional or in a list) and no boolean."""
    kinds = _leaf_types(annotation)
    return bool(kinds & {int, float}) and not kinds & {bool, Any}


def _leaf_types(annotation: Any) -> set:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _leaf_types(args[0])
    if origin is Literal:
        return {type(arg) for arg in args}
    if not args:
        return {annotation}
    return set().union(*(_leaf_types(arg) for arg in args))
