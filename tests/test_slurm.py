"""`collapse submit` and `collapse status` against a real Slurm (tests marked `slurm`), and the array
planning and script rendering without one.

The Slurm tests drive the CLI as a user would (`submit`, `status`, `run` as subprocesses) with the
stages of tests/slurm/toy_pipeline.py (fast, with a checkpointing training loop), on the two-node
localhost cluster of the `slurm_cluster` fixture (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.orchestration.launchers import slurm_state
from pipeline.orchestration.launchers.slurm import (
    plan_arrays,
    read_jobs,
    unit_levels,
    units_to_submit,
)
from pipeline.unit import Unit

REPO = Path(__file__).resolve().parent.parent
TOY_CLI = REPO / "tests" / "slurm" / "toy_pipeline.py"
sys.path.insert(0, str(TOY_CLI.parent))
import toy_pipeline
from helpers import WAIT_S, job_ids, scontrol_job, wait_for_queue_to_drain

from config_files import write_config_file

# ---------------------------------------------------------------- helpers


def write_config(tmp_path: Path, name: str = "toy", **sections) -> Path:
    defaults = {"mix": {"synthetic_fractions": [0.0, 0.5, 1.0], "token_budgets": [100, 200]},
                "slurm": {"cpus_per_task": 1, "mem": "500M", "time": "00:10:00"}}
    return write_config_file(tmp_path, name, defaults, sections)


def toy(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(TOY_CLI), *args], check=False, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"collapse {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def toy_executor(config: Path, overrides=()):
    from pipeline.config import load_config
    from pipeline.orchestration.executor import Executor
    from pipeline.orchestration.runner import plan_run

    cfg = load_config(config, list(overrides))
    return Executor(cfg=cfg, stages=toy_pipeline.STAGES, planned=plan_run(cfg, toy_pipeline.STAGES))


def ledger_events(path: Path) -> list[tuple[str, str, float, str]]:
    rows = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    return [(key, event, float(t), procs) for key, event, t, procs in rows]


def manifests(run_dir: Path) -> dict[str, dict]:
    """unit dir (relative) -> (fingerprint, metrics without bookkeeping)."""
    out = {}
    for path in sorted(run_dir.rglob("manifest.json")):
        if ".collapse" in path.parts:
            continue
        manifest = json.loads(path.read_text())
        metrics = {k: v for k, v in manifest["metrics"].items() if k not in ("resumed_from", "world_size")}
        out[str(path.parent.relative_to(run_dir))] = {"fingerprint": manifest["fingerprint"], "metrics": metrics}
    return out



# ---------------------------------------------------------------- planning, without Slurm


def _generations_plan() -> list[Unit]:
    """The real pipeline's shape with two generations: stages feed back into earlier ones."""
    units = [Unit("prepare", "prepare", {})]
    for g in (0, 1):
        teacher_inputs = ("prepare/prepare",) if g == 0 else ("prepare/prepare", f"generate/g{g - 1}")
        units.append(Unit("teacher", f"g{g}", {}, teacher_inputs, multiprocess=True))
        shards = [Unit("generate", f"g{g}-s{s:03d}", {}, (f"teacher/g{g}",), multiprocess=True) for s in range(2)]
        units += shards + [Unit("generate", f"g{g}", {}, tuple(s.key for s in shards))]
    for g in (0, 1):
        units.append(Unit("mix", f"g{g}-p0.5-n100", {}, ("prepare/prepare", f"generate/g{g}")))
    units += [Unit("train", f"s-{m.id}", {}, (m.key,), multiprocess=True) for m in units if m.stage == "mix"]
    return units


def test_waves_put_every_input_in_an_earlier_array():
    units = _generations_plan()
    arrays = plan_arrays(units, queued={}, max_array_size=1000)
    position = {u.key: i for i, a in enumerate(arrays) for u in a.units}
    waits_for: dict[str, set[str]] = {}  # array -> every array it waits for, directly or through others
    for i, array in enumerate(arrays):
        assert len({(u.stage, u.multiprocess) for u in array.units}) == 1
        for unit in array.units:
            assert all(position[k] < i for k in unit.inputs), f"{unit.key} waits for a later or its own array"
        waits_for[array.name] = set(array.after_arrays).union(*(waits_for[d] for d in array.after_arrays))
        needed = {arrays[position[k]].name for u in array.units for k in u.inputs}
        assert needed <= waits_for[array.name], f"{array.name} does not wait for all its inputs"
        implied = set().union(*(waits_for[d] for d in array.after_arrays))
        assert not array.after_arrays & implied, f"{array.name} lists a dependency its dependencies imply"
    assert arrays[position["generate/g0-s000"]].after_arrays == {arrays[position["teacher/g0"]].name}
    assert position["teacher/g0"] < position["generate/g0-s000"] < position["generate/g0"] < position["teacher/g1"]
    assert position["mix/g0-p0.5-n100"] < position["mix/g1-p0.5-n100"], "mix g0 need not wait for generation 1"
    assert [a.name for a in arrays][:4] == ["00-prepare", "01-teacher", "02-generate", "03-generate"]
    assert unit_levels(units)["train/s-g1-p0.5-n100"] == 8


def test_large_waves_split_at_max_array_size_and_dependents_wait_for_every_part():
    units = [Unit("prepare", "prepare", {})] + [Unit("mix", f"m{i}", {}, ("prepare/prepare",)) for i in range(7)]
    units += [Unit("train", f"t{i}", {}, (f"mix/m{i}",)) for i in range(7)]
    arrays = plan_arrays(units, queued={}, max_array_size=3)
    assert [(a.name, len(a.units)) for a in arrays] == [
        ("00-prepare", 1), ("01-mix.p0", 3), ("01-mix.p1", 3), ("01-mix.p2", 1),
        ("02-train.p0", 3), ("02-train.p1", 3), ("02-train.p2", 1)]
    assert arrays[4].after_arrays == {"01-mix.p0"} and arrays[6].after_arrays == {"01-mix.p2"}


def test_units_still_queued_are_not_resubmitted_but_waited_for(tmp_path):
    executor = toy_executor(write_config(tmp_path))
    queued = {f"mix/{u.id}": f"41_{i}" for i, u in enumerate(executor.planned.units("mix"))}
    queued["prepare/prepare"] = "40_0"
    todo = units_to_submit(executor, ["prepare", "mix", "train"], queued)
    assert {u.stage for u in todo} == {"train"}
    arrays = plan_arrays(todo, queued, max_array_size=100)
    assert len(arrays) == 1 and arrays[0].after_tasks == set(queued.values()) - {"40_0"}
    assert arrays[0].dependency({}) == "afterok:" + ":".join(sorted(set(queued.values()) - {"40_0"}))


def test_a_stage_whose_inputs_are_neither_done_nor_submitted_is_refused(tmp_path):
    executor = toy_executor(write_config(tmp_path))
    with pytest.raises(UserError, match=r"needs mix/p0.0-n100, which is neither done nor queued; add stage mix"):
        units_to_submit(executor, ["train"], queued={})


def test_dry_run_renders_scripts_and_submits_nothing(tmp_path):
    config = write_config(tmp_path, slurm={"partition": "gpu", "account": "proj42", "setup": ["module load cuda/12.4"],
                                           "stages": {"train": {"nodes": 2, "gpus_per_node": 4, "cpus_per_task": 32,
                                                                "extra": ["--exclusive"]}}})
    out = toy("submit", str(config), "--dry-run").stdout
    slurm_dir = tmp_path / "runs" / "toy" / "slurm"
    assert not (slurm_dir / "jobs.json").exists()
    scripts = {p.name: p.read_text() for p in (slurm_dir / "dry-run").glob("*.sbatch")}
    assert sorted(scripts) == ["00-prepare.sbatch", "01-mix.sbatch", "02-train.sbatch", "03-evaluate.sbatch"]
    for name, text in scripts.items():
        subprocess.run(["bash", "-n", str(slurm_dir / "dry-run" / name)], check=True)
        assert "{" + "stage}" not in text
    train, mix = scripts["02-train.sbatch"], scripts["01-mix.sbatch"]
    for option in ("--array=0-5", "--nodes=2", "--gpus-per-node=4", "--cpus-per-task=32", "--partition=gpu",
                   "--account=proj42", "--signal=B:USR1@120", "--requeue", "--kill-on-invalid-dep=yes", "--exclusive"):
        assert f"#SBATCH {option}" in train
    assert "module load cuda/12.4" in train and "PROCS_PER_NODE=4" in train
    assert """'\n        trap "" USR1""" in train and 'node=(--machine_rank "$SLURM_NODEID")' in train, \
        "the node rank must be expanded on each node (in single quotes), not once"
    assert "srun --ntasks-per-node=1" in train and "accelerate.commands.launch" in train
    assert "--gpus-per-node" not in mix and "--nodes=1" in mix and "accelerate" not in mix.split("set -uo")[1]
    units = (slurm_dir / "dry-run" / "01-mix.units").read_text().split()
    assert units == [u.id for u in toy_executor(config).planned.units("mix")]
    assert '--dependency=afterok:$JOB_01_mix' in out and "nothing submitted" in out
    assert "ACCELERATE_CONFIG=''" in train, "no accelerate config: plain data parallel"


def test_dry_run_passes_an_accelerate_config_for_fsdp(tmp_path):
    config = write_config(tmp_path, slurm={"accelerate_config": "configs/accelerate/fsdp.yaml",
                                           "stages": {"train": {"gpus_per_node": 2}}})
    toy("submit", str(config), "--dry-run")
    train = (tmp_path / "runs" / "toy" / "slurm" / "dry-run" / "02-train.sbatch").read_text()
    assert "ACCELERATE_CONFIG=configs/accelerate/fsdp.yaml" in train
    assert 'LAUNCH+=(--config_file "$ACCELERATE_CONFIG")' in train


def test_slurm_records_are_mapped_back_to_array_tasks(tmp_path):
    """Lines as Slurm 22.05 writes them (jobcomp/filetxt): tasks that ran, and a never-started array."""
    jobcomp = tmp_path / "jobcomp.txt"
    jobcomp.write_text(
        "JobId=6 UserId=root(0) Name=a JobState=FAILED Partition=debug ArrayJobId=2 ArrayTaskId=1 DerivedExitCode=0:0 ExitCode=5:0\n"
        "JobId=2 UserId=root(0) Name=a JobState=COMPLETED Partition=debug ArrayJobId=2 ArrayTaskId=2 ExitCode=0:0\n"
        "JobId=3 UserId=root(0) Name=a JobState=CANCELLED Partition=debug NodeList=(null) ExitCode=0:0\n")
    states = slurm_state.jobcomp_states(["2", "3"], {"2": 3, "3": 2}, jobcomp)
    assert states[("2", 1)] == slurm_state.TaskState("FAILED", "", "5:0")
    assert states[("2", 2)].state == "COMPLETED" and ("2", 0) not in states
    assert states[("3", 0)].state == states[("3", 1)].state == "CANCELLED"
    assert slurm_state.parse_indices("0-2,5,7-8%2") == [0, 1, 2, 5, 7, 8]
    sacct = slurm_state.parse_sacct("12_3|FAILED|1:0|NonZeroExitCode\n12_[4-5%2]|PENDING|0:0|Dependency\n"
                                    "12_0|CANCELLED by 0|0:15|None\n")
    assert sacct[("12", 3)] == slurm_state.TaskState("FAILED", "NonZeroExitCode", "1:0")
    assert sacct[("12", 5)] == slurm_state.TaskState("PENDING", "Dependency", "0:0")
    assert sacct[("12", 0)].state == "CANCELLED" and not sacct[("12", 0)].live


# ---------------------------------------------------------------- against a real Slurm


@pytest.mark.slurm
def test_submit_runs_the_chain_in_order_and_matches_a_local_run(slurm_cluster, tmp_path):
    ledger = tmp_path / "ledger.txt"
    grid = {"synthetic_fractions": [0.0, 0.5, 1.0], "token_budgets": [100]}
    config = write_config(tmp_path, mix=grid)
    out = toy("submit", str(config), env={"TOY_LEDGER": str(ledger)}).stdout
    run_dir = tmp_path / "runs" / "toy"
    jobs = read_jobs(toy_executor(config).cfg)["submissions"][0]["arrays"]
    # 3 units per stage with the cluster's MaxArraySize=2: two arrays each; every later array waits for
    # the arrays holding its inputs.
    assert [(a["name"], len(a["units"])) for a in jobs] == [
        ("00-prepare", 1), ("01-mix.p0", 2), ("01-mix.p1", 1), ("02-train.p0", 2), ("02-train.p1", 1),
        ("03-evaluate.p0", 2), ("03-evaluate.p1", 1)]
    ids = {a["name"]: a["job_id"] for a in jobs}
    assert jobs[3]["dependency"] == f"afterok:{ids['01-mix.p0']}"
    dependency = scontrol_job(ids["02-train.p0"])[0]["Dependency"]
    assert dependency.startswith(f"afterok:{ids['01-mix.p0']}") or dependency == "(null)"  # (null): already met
    assert f"job {ids['00-prepare']}" in out
    wait_for_queue_to_drain(list(ids.values()))

    events = ledger_events(ledger)
    started = {key: t for key, event, t, _ in events if event == "start"}
    ended = {key: t for key, event, t, _ in events if event == "end"}
    executor = toy_executor(config)
    assert set(ended) == {u.key for u in executor.planned}, "every unit ran to its end"
    for unit in executor.planned:
        assert all(started[unit.key] >= ended[k] for k in unit.inputs), f"{unit.key} started before an input ended"
    assert sorted(key for key, event, _, _ in events if event == "start") == sorted(u.key for u in executor.planned)

    local = write_config(tmp_path / "local", name="toy", mix=grid)
    toy("run", str(local), "--no-progress")
    assert manifests(run_dir) == manifests(tmp_path / "local" / "runs" / "toy")
    status = toy("status", str(run_dir)).stdout
    assert f"done [COMPLETED {ids['03-evaluate.p0']}_1]" in status
    again = toy("submit", str(config)).stdout
    assert "every unit" in again and "is done" in again


@pytest.mark.slurm
def test_a_failed_unit_cancels_its_dependents_and_a_resubmit_runs_only_what_is_left(slurm_cluster, tmp_path):
    ledger = tmp_path / "ledger.txt"
    config = write_config(tmp_path, mix={"synthetic_fractions": [0.0, 0.5], "token_budgets": [100]})
    failing = "train/gpt2-tiny-p0.5-n100"
    toy("submit", str(config), env={"TOY_LEDGER": str(ledger), "TOY_FAIL_UNIT": failing})
    run_dir = tmp_path / "runs" / "toy"
    ids = job_ids(run_dir)
    wait_for_queue_to_drain(ids)  # returns only if the evaluate array did not stay pending

    evaluate = scontrol_job(ids[-1])
    assert {r["JobState"] for r in evaluate} == {"CANCELLED"}
    assert {r["Reason"] for r in evaluate} == {"DependencyNeverSatisfied"}
    status = toy("status", str(run_dir)).stdout
    failed_line = next(line for line in status.splitlines() if line.startswith("gpt2-tiny-p0.5-n100") and "failed" in line)
    assert "RuntimeError: planned failure of train/gpt2-tiny-p0.5-n100 for the test" in failed_line
    assert f"FAILED {ids[2]}_1" in failed_line and "exit 1" in failed_line
    slurm_log = Path(failed_line.split(", log ")[1].split()[0].rstrip("]"))
    assert slurm_log.is_file() and "failed with exit code 1" in slurm_log.read_text()
    assert f"CANCELLED {ids[3]}_0 (DependencyNeverSatisfied)" in status

    before = len(ledger_events(ledger))
    out = toy("submit", str(config), env={"TOY_LEDGER": str(ledger)}).stdout
    second = read_jobs(toy_executor(config).cfg)["submissions"][1]["arrays"]
    # evaluate of the unit that did finish need not wait for the retried one: it goes in its own array.
    assert [(a["stage"], a["units"], bool(a["dependency"])) for a in second] == [
        ("train", ["gpt2-tiny-p0.5-n100"], False), ("evaluate", ["gpt2-tiny-p0.0-n100"], False),
        ("evaluate", ["gpt2-tiny-p0.5-n100"], True)], out
    wait_for_queue_to_drain([a["job_id"] for a in second])
    rerun = sorted({key for key, event, _, _ in ledger_events(ledger)[before:] if event == "end"})
    assert rerun == ["evaluate/gpt2-tiny-p0.0-n100", "evaluate/gpt2-tiny-p0.5-n100", failing]
    status = toy("status", str(run_dir)).stdout
    assert " failed " not in status and "FAILED" not in status
    assert status.count("done [COMPLETED") == 7, status


@pytest.mark.slurm
def test_usr1_checkpoints_requeues_and_resumes_a_two_node_training_unit(slurm_cluster, tmp_path):
    """The batch shell gets USR1 (as from --signal=B:USR1@N), forwards it through srun to both nodes'
    workers, which checkpoint and exit 75; the task requeues itself and resumes to the same result."""
    ledger = tmp_path / "ledger.txt"
    sections = {"mix": {"synthetic_fractions": [0.5], "token_budgets": [100]}, "stages": ["prepare", "mix", "train"]}
    config = write_config(tmp_path, slurm={"cpus_per_task": 1, "mem": "500M", "stages": {"train": {"nodes": 2}}}, **sections)
    toy("submit", str(config), env={"TOY_LEDGER": str(ledger), "TOY_STEP_SECONDS": "1"})
    run_dir = tmp_path / "runs" / "toy"
    train_job = job_ids(run_dir)[-1]
    key = "train/gpt2-tiny-p0.5-n100"
    deadline = time.monotonic() + WAIT_S
    while not any(k == key and e == "step2" for k, e, _, _ in ledger_events(ledger)):
        assert time.monotonic() < deadline, "training never reached step 2"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", f"{train_job}_0"], check=True)
    wait_for_queue_to_drain([train_job])

    record = scontrol_job(train_job)[0]
    assert record["JobState"] == "COMPLETED" and record["Restarts"] == "1"
    events = [(e, procs) for k, e, _, procs in ledger_events(ledger) if k == key]
    assert sorted(p for e, p in events if e.startswith("checkpointed")) == ["0/2", "1/2"], "both nodes stopped"
    assert [e for e, p in events if p == "0/2"].count("start") == 2, "ran, then resumed once"
    log = (run_dir / "logs" / "slurm" / f"02-train.{train_job}_0.out").read_text()
    assert "requeueing" in log and "(restart 1)" in log
    manifest = json.loads((run_dir / "train" / "gpt2-tiny-p0.5-n100" / "manifest.json").read_text())
    assert manifest["metrics"]["world_size"] == 2 and manifest["metrics"]["resumed_from"] >= 2

    local = write_config(tmp_path / "local", **sections)
    toy("run", str(local), "--no-progress")
    assert manifests(run_dir) == manifests(tmp_path / "local" / "runs" / "toy")


@pytest.mark.slurm
def test_a_task_whose_unit_is_locked_waits_and_takes_over_when_the_holder_dies(slurm_cluster, tmp_path):
    from pipeline.orchestration.runner import RunDir, unit_lock

    ledger = tmp_path / "ledger.txt"
    config = write_config(tmp_path, mix={"synthetic_fractions": [0.0], "token_budgets": [100]}, stages=["prepare", "mix"])
    executor = toy_executor(config)
    lock = RunDir(executor.cfg.run_dir).lock(executor.planned.get("prepare/prepare"))
    with unit_lock(lock) as held:  # this test process plays a `collapse run` that holds the unit
        assert held
        toy("submit", str(config), env={"TOY_LEDGER": str(ledger), "COLLAPSE_LOCK_POLL_SECONDS": "1"})
        ids = job_ids(executor.cfg.run_dir)
        log = executor.cfg.run_dir / "logs" / "slurm" / f"00-prepare.{ids[0]}_0.out"
        deadline = time.monotonic() + WAIT_S
        while "locked by another process" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, "the task never saw the lock"
            time.sleep(0.2)
        assert scontrol_job(ids[1])[0]["JobState"] == "PENDING", "mix must not start while prepare is locked"
    wait_for_queue_to_drain(ids)
    ran = [key for key, event, _, _ in ledger_events(ledger) if event == "end"]
    assert ran == ["prepare/prepare", "mix/p0.0-n100"]
    assert {r["JobState"] for i in ids for r in scontrol_job(i)} == {"COMPLETED"}


# ---------------------------------------------------------------- rendering: values can never become commands


def _resources(**values):
    """A stage's resources as the renderer reads them, built without the config's own validation:
    the render-time checks must hold even for values that got past it."""
    from types import SimpleNamespace

    base = dict(partition=None, account=None, qos=None, time="01:00:00", nodes=1, gpus_per_node=0,
                cpus_per_task=2, mem="8G", extra=[])
    return SimpleNamespace(**{**base, **values})


def _slurm(**values):
    from types import SimpleNamespace

    base = dict(stages={}, setup=[], accelerate_config=None, signal_seconds=120, requeue=True)
    return SimpleNamespace(**{**base, **values})


def _options(resources, slurm, stage="train", shape=None):
    from pipeline.orchestration.launchers.slurm_templates import TaskShape, sbatch_options

    return sbatch_options(resources, slurm, job_name="toy.02-train", array_size=3, chdir=Path("/work dir"),
                          log_pattern=Path("/runs/toy/logs/slurm/02-train.%A_%a.out"),
                          shape=shape or TaskShape("unit"), stage=stage)


def _sbatch_header(script: str) -> list[str]:
    """The options sbatch reads: arguments of the #SBATCH lines before the first command, split the way
    sbatch splits them (shell-like quotes, an unquoted # starts a comment)."""
    import shlex

    options = []
    for line in script.splitlines()[1:]:
        if line.strip() and not line.lstrip().startswith("#"):
            break
        if line.startswith("#SBATCH"):
            options += shlex.split(line[len("#SBATCH"):], comments=True)
    return options


INJECTIONS = ["gpu\ntouch /tmp/x", "gpu\rtouch /tmp/x", "gpu\x1b[2J", "gpu\u2028touch /tmp/x", "gpu\x85x", "a\tb"]


@pytest.mark.parametrize("value", INJECTIONS)
@pytest.mark.parametrize("field", ["partition", "account", "qos", "time", "mem"])
def test_a_slurm_value_with_a_control_character_is_refused_naming_the_key(field, value):
    with pytest.raises(UserError) as info:
        _options(_resources(**{field: value}), _slurm())
    message = str(info.value)
    assert message.startswith(f"slurm.{field}: ") and "valid: one line of printable text" in message
    assert "\n" not in message and "\r" not in message and "\u2028" not in message


def test_control_characters_in_overrides_extra_and_setup_name_their_key():
    override = _slurm(stages={"train": {"partition": "gpu\ntouch /tmp/x"}})
    with pytest.raises(UserError, match=r"^slurm\.stages\.train\.partition: 'gpu\\ntouch /tmp/x' contains"):
        _options(_resources(partition="gpu\ntouch /tmp/x"), override)
    with pytest.raises(UserError, match=r"^slurm\.extra\[1\]: "):
        _options(_resources(extra=["--exclusive", "--comment=x\ntouch /tmp/x"]), _slurm())
    from pipeline.orchestration.launchers.slurm_templates import TaskShape, render_script

    for slurm, key in ((_slurm(setup=["module load cuda", "true\nrm -rf ~"]), "slurm.setup[1]"),
                       (_slurm(accelerate_config="fsdp.yaml\ntouch /tmp/x"), "slurm.accelerate_config")):
        with pytest.raises(UserError, match=rf"^{re.escape(key)}: "):
            render_script(TaskShape("unit"), options=[], slurm=slurm, python=sys.executable, entry=["-m", "pipeline"],
                          stage="train", run_dir=Path("/runs/toy"), config=Path("/runs/toy/config.yaml"),
                          units_file=Path("/runs/toy/slurm/x.units"))


ODD_VALUES = {"partition": "gpu;touch /tmp/x", "account": "my account", "qos": "$(touch /tmp/x)",
              "time": "1-00:00:00", "mem": "8G#comment"}


@pytest.mark.parametrize("kind", ["unit", "accelerate"])
def test_every_sbatch_option_survives_odd_values_and_precedes_the_first_command(kind, tmp_path):
    from pipeline.orchestration.launchers.slurm_templates import TaskShape, render_script

    shape = TaskShape(kind, processes_per_node=2)
    resources = _resources(**ODD_VALUES, nodes=2, gpus_per_node=2, extra=["--exclusive", "#SBATCH --comment='a b'"])
    slurm = _slurm(setup=["module load cuda/12.4"], accelerate_config="configs/x; touch /tmp/x")
    options = _options(resources, slurm, shape=shape)
    script = render_script(shape, options=options, slurm=slurm, python=sys.executable, entry=["-m", "pipeline"],
                           stage="train", run_dir=tmp_path / "runs dir", config=tmp_path / "c $(x).yaml",
                           units_file=tmp_path / "02-train.units")
    header = _sbatch_header(script)
    for field, value in ODD_VALUES.items():
        assert f"--{field}={value}" in header, (field, header)
    assert "--exclusive" in header and "--comment=a b" in header and "--chdir=/work dir" in header
    assert len(header) == sum(line.startswith("#SBATCH") for line in script.splitlines()), \
        "every #SBATCH line is read by sbatch: each holds one option, and none comes after a command"
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_a_template_with_an_option_after_a_command_is_refused(tmp_path):
    from pipeline.orchestration.launchers.slurm_templates import TaskShape, render_script, template_path

    (tmp_path / "slurm").mkdir()
    text = template_path("unit").read_text().replace("set -uo pipefail", "set -uo pipefail\n#SBATCH --exclusive", 1)
    (tmp_path / "slurm" / "unit.sbatch").write_text(text)
    with pytest.raises(UserError, match=r"^sbatch template .*unit.sbatch: #SBATCH on line \d+ comes after the first"):
        render_script(TaskShape("unit"), options=[], slurm=_slurm(), python=sys.executable, entry=["-m", "pipeline"],
                      stage="train", run_dir=tmp_path, config=tmp_path / "c.yaml", units_file=tmp_path / "u",
                      search_dir=tmp_path)


STUB_SRUN = """#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
for id in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$id "$@" || exit $?; done
"""
STUB_SCONTROL = """#!/bin/bash
[ "$2" = hostnames ] && echo node1 || echo "NodeName=node1 NodeAddr=10.0.0.1 State=IDLE"
"""
STUB_PYTHON = """#!{python}
import json, os, sys
with open(os.environ["ARGV_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
"""


@pytest.mark.parametrize("kind", ["unit", "accelerate"])
def test_a_rendered_script_passes_every_value_as_one_argument_and_runs_nothing_else(kind, tmp_path):
    """Run the script with stub srun/scontrol/python: the launched command lines are exactly as planned,
    and values holding `;`, `$(...)`, quotes or spaces are never parsed as shell code."""
    from pipeline.orchestration.launchers.slurm_templates import TaskShape, render_script

    bin_dir = tmp_path / "bin dir"
    bin_dir.mkdir()
    for name, text in (("srun", STUB_SRUN), ("scontrol", STUB_SCONTROL), ("python", STUB_PYTHON)):
        (bin_dir / name).write_text(text.replace("{python}", sys.executable))
        (bin_dir / name).chmod(0o755)
    pwned, units = tmp_path / "pwned", tmp_path / "units"
    units.write_text("g0-s001\n")
    evil = f"x; touch {pwned}; $(touch {pwned}) '\"`touch {pwned}`"
    shape = TaskShape(kind, processes_per_node=2)
    slurm = _slurm(accelerate_config=f"cfg {evil}.yaml")
    config = tmp_path / f"config {evil}.yaml"
    script = render_script(shape, options=_options(_resources(), slurm, shape=shape), slurm=slurm,
                           python=str(bin_dir / "python"), entry=["-m", "pipeline"], stage="generate",
                           run_dir=tmp_path, config=config, units_file=units)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ARGV_LOG": str(tmp_path / "argv.jsonl"),
           "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_JOB_ID": "7", "SLURM_JOB_ID": "8", "SLURM_NNODES": "2",
           "SLURM_CPUS_PER_TASK": "4", "SLURM_JOB_NODELIST": "node[1-2]"}
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    launched = [json.loads(line) for line in (tmp_path / "argv.jsonl").read_text().splitlines()]
    command = ["-m", "pipeline", "stage", "generate", str(config), "--unit", "g0-s001"]
    if kind == "unit":
        assert launched == [command]
    else:
        assert len(launched) == 2
        for rank, argv in enumerate(launched):
            assert argv[:2] == ["-m", "accelerate.commands.launch"] and argv[-len(command):] == command
            options = argv[2:-len(command)]
            assert options[options.index("--config_file") + 1] == f"cfg {evil}.yaml"
            assert options[options.index("--machine_rank") + 1] == str(rank)
            assert options[options.index("--rdzv_conf") + 1] == f"is_host={int(rank == 0)}"
            assert options[options.index("--num_processes") + 1] == "4"
            assert options[options.index("--main_process_ip") + 1] == "10.0.0.1"
    assert not pwned.exists()


@pytest.mark.parametrize("slurm", [{"partition": "gpu\ntouch /tmp/x"},
                                   {"stages": {"train": {"partition": "gpu\ntouch /tmp/x"}}},
                                   {"setup": ["module load x\ntouch /tmp/x"]}])
def test_submit_with_a_multi_line_slurm_value_exits_2_with_one_line_and_writes_no_script(slurm, tmp_path):
    config = write_config(tmp_path, slurm=slurm)
    proc = toy("submit", str(config), "--dry-run", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1 and "touch /tmp/x" in message
    assert ("stages" in slurm and "train" in message) or "partition" in message or "setup" in message
    assert not list((tmp_path / "runs" / "toy" / "slurm").glob("**/*.sbatch"))
