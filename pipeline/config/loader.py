"""Reading a config: YAML (never executed), `base:` chains, `--set` overrides, one-line errors.

A config is data, never code: YAML is read with a safe loader, `base:` chains are merged as dicts,
`--set key.path=value` overrides are parsed as YAML scalars. Booleans are YAML 1.2's (true/false only):
YAML 1.1 also reads yes/no/on/off as booleans, which turns `report.title: no` or `compile: off` into
False; here they stay strings, and a boolean field still takes them (pydantic reads "no" as False). Any error becomes one line naming the
file (or the --set item), the key path and what would be valid (`ConfigError`, a `UserError`: the CLI
exits 2 before anything is written).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.config.base import ConfigError
from pipeline.config.schema import Config, TrainingConfig

# Keys that moved when teacher/train started nesting one TrainingConfig and one ModelConfig: an old
# config gets one line naming the new key instead of being silently accepted or half-read.
_MOVED_TEACHER = {"pretrained": "teacher.model.pretrained", "finetune": "teacher.model.finetune",
                  "lora": "teacher.model.lora", "trust_remote_code": "teacher.model.trust_remote_code"}


class _ConfigYamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (true/false in any common case); yes/no/on/off stay strings."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_ConfigYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_ConfigYamlLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_ConfigYamlLoader)  # noqa: S506  (a SafeLoader subclass: data only)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (following `base:`), apply `--set` overrides, validate. Raises ConfigError."""
    path = Path(path)
    raw = _read_with_bases(path, chain=())
    if not raw:
        raise ConfigError(f"{path}: the config is empty; give at least `name:` (or `base: demo.yaml` to extend the demo)")
    set_keys = []
    for item in overrides or []:
        key, value = _parse_override(item)
        _assign(raw, key, value, item)
        set_keys.append(key)
    raw.pop("base", None)
    _reject_moved_keys(raw, path, set_keys)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        loc, message = first_error(exc)
        where = _source_of(loc, set_keys, path)
        extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{where}: {loc or '(top level)'}: {message}{extra}") from None


def _source_of(loc: str, set_keys: list[str], path: Path) -> str:
    """Blame the --set item whose key is (or contains, or is inside) the failing location, else the file."""
    for key in set_keys:
        if loc == key or loc.startswith(key + ".") or key.startswith(loc + ".") or (loc and key.startswith(loc)):
            return f"--set {key}"
    return str(path)


def _reject_moved_keys(raw: dict[str, Any], path: Path, set_keys: list[str]) -> None:
    fit = raw.get("fit")
    if isinstance(fit, dict) and "shared_exponent" in fit:
        where = _source_of("fit.shared_exponent", set_keys, path)
        raise ConfigError(f"{where}: fit.shared_exponent: this key was replaced; use fit.share (exponent: one alpha, "
                          "an amplitude per fraction; exponent_and_amplitude: what shared_exponent: true fitted)")
    for section in ("teacher", "train"):
        block = raw.get(section)
        if not isinstance(block, dict):
            continue
        for key in block:
            new = None
            if key in TrainingConfig.model_fields:
                new = f"{section}.training.{key}"
            elif section == "teacher" and key in _MOVED_TEACHER:
                new = _MOVED_TEACHER[key]
            elif section == "teacher" and key == "init":
                new = "teacher.model.pretrained (set it for a pretrained teacher; leave it out for scratch)"
            if new:
                where = _source_of(f"{section}.{key}", set_keys, path)
                raise ConfigError(f"{where}: {section}.{key}: this key moved; use {new}")


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    if not path.is_file():
        what = f"base of {chain[-1]}" if chain else "config"
        raise ConfigError(f"{path}: {what} file not found")
    if path.resolve() in chain:
        raise ConfigError(f"{path}: base chain loops back to itself ({' -> '.join(map(str, chain))})")
    try:
        data = _parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values, got {type(data).__name__}")
    base = data.get("base")
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: must be a path to another config file")
    merged = _read_with_bases((path.parent / base), chain + (path.resolve(),))
    return _deep_merge(merged, data)


def _deep_merge(base: dict, over: dict) -> dict:
    """Mappings merge key by key; anything else (lists included) in `over` replaces."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", key):
        raise ConfigError(f"--set {item}: expected KEY.PATH=VALUE, e.g. --set mix.token_budgets=[50000,200000]")
    try:
        return key, _parse_yaml(text) if text else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set {item}: value is not valid YAML") from None


def _assign(raw: dict, key: str, value: Any, item: str) -> None:
    node: Any = raw
    parts = key.split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                where = ".".join(parts[:depth]) or "(top level)"
                raise ConfigError(f"--set {item}: {where} is a list of {len(node)}; valid indices: 0..{len(node) - 1}")
            if last:
                node[int(part)] = value
            node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            node = node.setdefault(part, {}) if not last else None
        else:
            where = ".".join(parts[:depth])
            raise ConfigError(f"--set {item}: {where} is a {type(node).__name__}, not a mapping or list")


def first_error(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    kind, msg = err["type"], err["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        parent = _model_at(err["loc"][:-1])
        valid = ", ".join(parent.model_fields) if parent else "see configs/demo.yaml"
        msg = f"unknown key; valid keys here: {valid}"
    elif "input" in err and kind not in ("missing",) and not isinstance(err["input"], (dict, list)):
        msg = f"{msg} (got {err['input']!r})"
    return loc, msg


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class at a location (to list the valid keys next to an unknown one)."""
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        model = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return None
    return model


def default_config_path() -> Path:
    """The embedded default: configs/demo.yaml in the working directory, else beside the package."""
    local = Path("configs/demo.yaml")
    return local if local.is_file() else Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
