"""Checkpoints that survive a kill at any instant.

A checkpoint is a directory `checkpoints/step-00000120/` holding what `Accelerator.save_state` writes
(model weights as safetensors, optimizer state, and `random_states_<rank>.pkl` with the python, numpy,
torch and CUDA generator states of EVERY process; FSDP shards through accelerate's FSDP savers) plus
`trainer_state.json` (step, data position, scheduler, best validation loss, counters).
Every process writes into `.tmp-step-00000120/`; after a barrier the main process writes
`trainer_state.json` last and renames the directory into place. A directory without the `.tmp-`
prefix is therefore complete; a kill mid-write leaves only a `.tmp-` directory, removed on restart,
and the previous checkpoint untouched. The newest `keep` checkpoints are kept.

With keep_best, the weights of the best validation so far are a snapshot of the same kind,
`checkpoints/best-00000080/`, written under a new name at each improvement. A best snapshot is deleted
only when no kept checkpoint refers to it (their `best_step`), so resuming from any kept checkpoint
finds the best weights that checkpoint knew about.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.io import TEMP_PREFIX, replace_dir, write_dir_atomic, write_json_atomic
from pipeline.lm.models import merge_lora

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^(step|best)-(\d{8,})$")


class _TiedWeightsNotice(logging.Filter):
    """Accelerate warns on every save that it dropped the tied output embedding; tied weights are the
    design of these models (safetensors stores a shared tensor once) and loading restores the tie."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNotice())


def save_snapshot(accelerator, final: Path, state: dict[str, Any]) -> None:
    """Accelerate state of every process + `trainer_state.json`, written to a temp dir, renamed to `final`."""
    tmp = final.with_name(f"{TEMP_PREFIX}{final.name}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / STATE_FILE, state)
        replace_dir(tmp, final)
    accelerator.wait_for_everyone()


def load_snapshot(accelerator, path: Path) -> dict[str, Any]:
    """Restore model, optimizer and every process's RNG state from `path`; return its trainer state."""
    state = json.loads((path / STATE_FILE).read_text())
    accelerator.load_state(str(path))
    return state


class Checkpoints:
    """The checkpoint directories of one training run."""

    def __init__(self, root: Path, keep: int) -> None:
        self.root = Path(root)
        self.keep = max(1, keep)

    def path(self, step: int, kind: str = "step") -> Path:
        return self.root / f"{kind}-{step:08d}"

    def complete(self, kind: str = "step") -> list[tuple[int, Path]]:
        """(step, dir) of every finished checkpoint (kind "step") or best snapshot ("best"), oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            match = _NAME.match(entry.name)
            if match and match.group(1) == kind and (entry / STATE_FILE).is_file():
                found.append((int(match.group(2)), entry))
        return sorted(found)

    def latest(self) -> Path | None:
        found = self.complete()
        return found[-1][1] if found else None

    def remove_partial(self) -> None:
        """Delete leftovers of a checkpoint write that was killed (main process, before training)."""
        if self.root.is_dir():
            for entry in self.root.iterdir():
                if entry.name.startswith(TEMP_PREFIX):
                    shutil.rmtree(entry, ignore_errors=True)

    def save(self, accelerator, step: int, state: dict[str, Any], kind: str = "step") -> Path:
        """Write checkpoint (or best snapshot) `step`, then prune what is no longer needed."""
        path = self.path(step, kind)
        if accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
        save_snapshot(accelerator, path, state)
        if accelerator.is_main_process:
            self.prune(state.get("best_step"))
        accelerator.wait_for_everyone()
        return path

    def prune(self, current_best: int | None) -> None:
        """Keep the newest `keep` checkpoints and the best snapshots they (or the live run) refer to."""
        for _, old in self.complete()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        wanted = {current_best}
        for _, path in self.complete():
            wanted.add(json.loads((path / STATE_FILE).read_text()).get("best_step"))
        for step, path in self.complete("best"):
            if step not in wanted:
                shutil.rmtree(path, ignore_errors=True)

    def delete_all(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def load_run_snapshot(accelerator, path: Path, run: dict[str, Any], log) -> dict[str, Any]:
    """The trainer state of checkpoint `path` (model, optimizer and RNG restored), if it is of this run."""
    world = accelerator.num_processes
    state = load_snapshot(accelerator, path)
    if state["run"] != run:
        raise UserError(f"train: checkpoint {path} belongs to another run ({state['run']} != {run}); "
                        f"delete {path.parent} to start over")
    if state["processes"] != world:
        log.warning("checkpoint %s was written by %d processes, resuming with %d: the data order is the same, "
                    "per-process random states (dropout) are not restored", path, state["processes"], world)
    return state


def save_final_model(accelerator, model, path: Path) -> None:
    """save_pretrained (safetensors) of the plain model, LoRA merged; temp dir renamed into place."""
    from peft import PeftModel

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if isinstance(unwrapped, PeftModel):
        plain, state_dict = merge_lora(unwrapped), None
    else:
        plain, state_dict = unwrapped, accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        write_dir_atomic(path, lambda tmp: plain.save_pretrained(str(tmp), state_dict=state_dict))
    accelerator.wait_for_everyone()
