"""One way for tests to write a config file: defaults, then per-test sections merged one level deep."""

from __future__ import annotations

from pathlib import Path

import yaml


def write_config_file(tmp_path: Path, name: str, defaults: dict, sections: dict) -> Path:
    """tmp_path/NAME.yaml from `defaults` with each of `sections` merged into its key (dicts) or replacing it."""
    data = {"name": name, "runs_dir": str(tmp_path / "runs"), **defaults}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path
