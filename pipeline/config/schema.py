"""The typed schema of a config (pydantic v2): every field with its default and what it does.

Sections nest instead of inheriting: `teacher.model` and each of `train.students` is one ModelConfig
(the one place for pretrained / finetune / lora / trust_remote_code), `teacher.training` and
`train.training` are one TrainingConfig. configs/demo.yaml lists every field with a comment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, Strict, field_validator, model_validator

from pipeline.config.base import STAGES, Section, StageName
from pipeline.config.paths import pretrained_problem
from pipeline.config.slurm import SlurmConfig
from pipeline.lm.presets import PRESETS, model_dims
from pipeline.lm.training.logs import tracker_problem
from pipeline.data.sources import SCHEMES as SOURCE_SCHEMES  # noqa: E402  (one list, in the data layer)

# Every seed: what numpy's generators take (0 <= seed < 2**32), checked when read; strict, so `true` is refused.
Seed = Annotated[int, Strict(), Field(ge=0, lt=2**32)]

# Counts no machine reaches: a typo (epochs 1e30) is refused when the config is read instead of training
# forever. 10**14 tokens is several times the largest published training run (~1.5 * 10**13).
MAX_TOKENS = 10**14
MAX_EPOCHS = 10_000


# ---------------------------------------------------------------- data


class ReferenceLanguageConfig(Section):
    """`builtin:reference-language`: a generated language whose probabilities are known exactly."""

    beta: float = Field(1.3, gt=1.0, description="Zipf exponent of word frequencies (> 1).")
    lexicon_size: int = Field(3000, ge=10, description="Number of distinct words.")
    documents: int = Field(3000, ge=10, description="Documents to generate (before the split).")
    mean_sentence_words: float = Field(10.0, gt=1.0, description="Mean words per sentence.")
    mean_document_sentences: float = Field(6.0, gt=1.0, description="Mean sentences per document.")
    seed: Seed = Field(0, description="Seed of the lexicon and of the sampled documents (0 <= seed < 2**32).")


class CorpusConfig(Section):
    """Where the human text comes from and how it is split."""

    source: str = Field(
        "builtin:wikipedia",
        description="hf:NAME[:CONFIG] | files:GLOB | builtin:wikipedia | builtin:reference-language",
    )
    text_field: str = Field("text", description="Column/field holding the text (hf, jsonl, parquet).")
    split: str = Field("train", description="Split to read from an hf dataset.")
    max_documents: int | None = Field(None, gt=0, description="Read at most this many documents.")
    streaming: bool = Field(False, description="Stream an hf dataset instead of downloading it whole.")
    min_chars: int = Field(600, ge=0, description="builtin:wikipedia only: join paragraphs into documents of at least this many characters.")
    txt_mode: Literal["blocks", "file"] = Field("blocks", description="files: .txt: one document per blank-line block, or per file.")
    validation_fraction: float = Field(0.05, gt=0.0, lt=0.5, description="Share of documents held out for validation.")
    test_fraction: float = Field(0.05, gt=0.0, lt=0.5, description="Share held out for test (never trained on).")
    seed: Seed = Field(0, description="Seed of the document split (0 <= seed < 2**32).")
    reference: ReferenceLanguageConfig = Field(default_factory=ReferenceLanguageConfig)

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(SOURCE_SCHEMES) or value in ("hf:", "files:"):
            raise ValueError(f"unknown source {value!r}; valid: {', '.join(s + ('...' if s.endswith(':') else '') for s in SOURCE_SCHEMES)}")
        if value.startswith("builtin:") and value not in SOURCE_SCHEMES:
            raise ValueError(f"unknown built-in {value!r}; valid: builtin:wikipedia, builtin:reference-language")
        return value


class TokenizerConfig(Section):
    """Byte-level BPE trained on the human train split, or a pretrained model's tokenizer."""

    kind: Literal["bpe", "pretrained"] = Field("bpe", description="bpe (train one) | pretrained (load one).")
    vocab_size: int = Field(4096, ge=300, description="Vocabulary size of a trained BPE (>= 300: 256 bytes + merges).")
    path: str | None = Field(None, description="Pretrained tokenizer path/hub id; default: the teacher's pretrained model.")

    _tokenizer_exists = field_validator("path")(
        lambda cls, v: _valid_unless(v and pretrained_problem(v, needs=("tokenizer_config.json", "tokenizer.json")), v))


class PackingConfig(Section):
    """Tokenised documents become fixed-length blocks with EOS between documents."""

    block_size: int = Field(128, ge=8, description="Tokens per training block (the context length).")
    num_proc: int = Field(1, ge=1, description="Processes for tokenisation (datasets.map num_proc).")


# ---------------------------------------------------------------- models and training


class LoraConfig(Section):
    """LoRA adapters through peft (used when finetune: lora)."""

    r: int = Field(8, ge=1, description="Adapter rank.")
    alpha: float = Field(16.0, gt=0, description="Scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] | None = Field(None, description="Module names to adapt; default: the family's attention/MLP projections.")


class ModelConfig(Section):
    """A causal LM: a family + size preset (or explicit dimensions), or a pretrained checkpoint."""

    name: str | None = Field(None, description="Label in unit ids and tables; default: FAMILY-SIZE.")
    family: Literal["gpt2", "llama"] = Field("gpt2", description="Architecture family.")
    size: str | None = Field("tiny", description="Preset name (see pipeline/lm/presets.py); explicit dims below override it.")
    n_layer: int | None = Field(None, ge=1, description="Transformer blocks.")
    n_embd: int | None = Field(None, ge=8, description="Hidden size.")
    n_head: int | None = Field(None, ge=1, description="Attention heads.")
    n_kv_head: int | None = Field(None, ge=1, description="Key/value heads (llama, grouped-query attention).")
    intermediate_size: int | None = Field(None, ge=8, description="MLP width (llama).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout everywhere (0: ~40% faster on CPU).")
    pretrained: str | None = Field(None, description="Start from this checkpoint instead of random init: a directory, a hub id (cached; nothing is downloaded offline), gguf:PACKAGE or a .gguf file.")
    finetune: Literal["none", "full", "lora"] = Field("full", description="With pretrained: full fine-tuning, LoRA, or none (teacher only: use it as is).")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    trust_remote_code: bool = Field(False, description="Allow custom modelling code from the checkpoint (off: safer).")

    _checkpoint_exists = field_validator("pretrained")(
        lambda cls, v: _valid_unless(v and pretrained_problem(v, needs=("config.json",)), v))

    @model_validator(mode="after")
    def _known_size(self) -> "ModelConfig":
        if self.pretrained is None and self.size is not None and self.size not in PRESETS[self.family]:
            raise ValueError(f"unknown size {self.size!r} for family {self.family}; valid: {', '.join(PRESETS[self.family])}")
        return self

    def result_fields(self) -> dict[str, Any]:
        """What determines the model's architecture and init (fingerprinted): resolved dimensions
        (scratch), or the checkpoint and fine-tuning method (pretrained). A valid ModelConfig on its own."""
        if self.pretrained:
            keep = {"family", "pretrained", "finetune", "trust_remote_code"} | ({"lora"} if self.finetune == "lora" else set())
            return {**self.model_dump(mode="json", include=keep), "size": None}
        return {"family": self.family, "size": None, "dropout": self.dropout, **model_dims(self)}

    def checkpoint_identity(self) -> dict[str, Any] | None:
        """The pretrained checkpoint's content identity (sizes, hashes), so that a changed file reruns units."""
        if not self.pretrained:
            return None
        from pipeline.lm.pretrained import identity

        return identity(self.pretrained)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.pretrained:
            return Path(self.pretrained.removeprefix("gguf:")).name.replace("/", "-")
        return f"{self.family}-{self.size or 'custom'}"


class TrainingConfig(Section):
    """How one model trains (a student or the scratch teacher): one loop, shared."""

    epochs: float | None = Field(1.0, gt=0, le=MAX_EPOCHS, description=f"Passes over the unit's data (ignored when tokens is set; at most {MAX_EPOCHS:,}).")
    tokens: int | None = Field(None, gt=0, le=MAX_TOKENS, description=f"Train for this many tokens instead of epochs (at most {MAX_TOKENS:.0e}).")
    min_tokens: int | None = Field(None, gt=0, le=MAX_TOKENS, description=f"Train for at least this many tokens: more epochs on a small unit's data, so that a small budget's student is limited by its data, not by too few optimizer steps (with keep_best, the best epoch is kept; at most {MAX_TOKENS:.0e}).")
    batch_size: int = Field(8, ge=1, description="Global batch in blocks per optimizer step (all processes).")
    micro_batch_size: int | None = Field(None, ge=1, description="Blocks per process per forward; default: batch_size / processes (accumulates the rest).")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate (AdamW).")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decays to lr * min_lr_ratio.")
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="Share of steps with linear warmup.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (matrices only).")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the gradient norm (0: off).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU.")
    eval_every: int = Field(0, ge=0, description="Validate every N steps (0: at the end of each epoch).")
    keep_best: bool = Field(True, description="Keep the checkpoint with the best validation loss as the final model.")
    early_stopping_patience: int | None = Field(None, ge=1, description="Stop after this many validations without improvement.")
    checkpoint_every: int = Field(200, ge=0, description="Checkpoint every N steps (0: only on SIGTERM/SIGUSR1).")
    keep_checkpoints: int = Field(2, ge=1, description="Keep the last K checkpoints while training.")
    log_every: int = Field(10, ge=1, description="Log loss, lr, tokens/s, MFU every N steps.")
    compile: Literal["auto", "on", "off"] = Field("auto", description="torch.compile the model: auto = on for CUDA, off on CPU (where it does not pay).")
    trackers: list[str] = Field(["tensorboard"], description="Accelerate trackers (log_with): tensorboard, wandb, mlflow, aim, comet_ml (installed); offline by default; [] for none.")

    _known_trackers = field_validator("trackers")(lambda cls, v: _valid_unless(tracker_problem(v), v))

    # How often we log, checkpoint or compile, and where metrics go, does not change the model: these
    # are settings (not fingerprinted), so changing them never redoes a finished unit.
    SETTINGS: ClassVar[frozenset[str]] = frozenset({"checkpoint_every", "keep_checkpoints", "log_every", "compile",
                                                    "trackers"})

    # Added after runs existed: hashed only when set, so that finished units of configs without it keep
    # their fingerprints (unset, it changes nothing).
    HASHED_WHEN_SET: ClassVar[frozenset[str]] = frozenset({"min_tokens"})

    def result_fields(self) -> dict[str, Any]:
        """The fields that change what a trained model is (hashed into fingerprints)."""
        unset = {name for name in self.HASHED_WHEN_SET if getattr(self, name) is None}
        return self.model_dump(mode="json", exclude=set(self.SETTINGS) | unset)

    def settings(self) -> dict[str, Any]:
        return self.model_dump(mode="json", include=set(self.SETTINGS))

    @classmethod
    def of_unit(cls, params: dict[str, Any], settings: dict[str, Any]) -> TrainingConfig:
        """The config a train or teacher unit trains with: its fingerprinted fields (params["training"],
        from `result_fields`) plus its settings (settings["training"], from `settings`)."""
        return cls.model_validate({**params["training"], **settings["training"]})


class TeacherConfig(Section):
    """The model that writes the synthetic text (also how each later generation's teacher trains).

    Scratch when `model.pretrained` is empty (trained on the human train split, as in Strong Model
    Collapse); otherwise the pretrained model, fine-tuned per `model.finetune` (none: used as is).
    """

    model: ModelConfig = Field(default_factory=ModelConfig, description="The teacher's architecture, or its pretrained checkpoint (model.pretrained).")
    training: TrainingConfig = Field(default_factory=lambda: TrainingConfig(epochs=1.0), description="How the teacher trains (scratch, or fine-tuning).")
    replicates: int = Field(1, ge=1, le=100, description="Independent teachers per generation (1-100). Replicate 0 is the run's teacher; replicate r >= 1 has its own initialisation, data order and sampling seeds, its own synthetic corpus, mixtures, students and evaluations (p = 0 mixtures read no synthetic text and are shared), so that intervals carry the variance over teachers.")

    @property
    def pretrained(self) -> bool:
        return self.model.pretrained is not None

    @property
    def trains(self) -> bool:
        return not self.pretrained or self.model.finetune != "none"


class GenerateConfig(Section):
    """Sampling synthetic text from the teacher, over one or more generations."""

    tokens: int = Field(300_000, gt=0, le=MAX_TOKENS, description=f"Synthetic tokens to write per generation (at most {MAX_TOKENS:.0e}).")
    temperature: float = Field(1.0, gt=0, description="Softmax temperature (< 1 thins the tails).")
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens (0: off).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (1: off).")
    max_new_tokens: int = Field(128, ge=1, description="Tokens per sampled sequence at most.")
    min_new_tokens: int = Field(0, ge=0, description="EOS is suppressed before this many tokens.")
    repetition_penalty: float = Field(1.0, gt=0, description="> 1 discourages repeats (1: off).")
    prompt: Literal["bos", "human"] = Field("bos", description="bos: unconditional; human: first prompt_tokens of human train documents.")
    prompt_tokens: int = Field(8, ge=1, description="Prompt length with prompt: human.")
    batch_size: int | None = Field(None, ge=1, description="Sequences per generate call; default: as many as fit in memory.")
    shards: int = Field(4, ge=1, description="Units per generation; a killed run regenerates only missing shards.")
    generations: int = Field(1, ge=1, description="Teacher generations: g+1's teacher trains on g's synthetic text.")
    mode: Literal["replace", "accumulate"] = Field("replace", description="Later teachers train on the last corpus only, or on all so far.")
    heldout_fraction: float = Field(0.05, ge=0, lt=0.5, description="Share of synthetic text held out (students are evaluated on it).")
    tail_rank: int = Field(1000, ge=1, description="Diagnostics: mass beyond this human word rank is 'the tail'.")
    seed: Seed = Field(0, description="Sampling seed (per shard seeds derive from it; 0 <= seed < 2**32).")


class MixConfig(Section):
    """Human/synthetic mixtures: a grid of synthetic fractions x token budgets."""

    synthetic_fractions: list[float] = Field([0.0, 0.5, 1.0], min_length=1, description="Synthetic share p of each mixture, each in [0, 1].")
    token_budgets: list[int] = Field([50_000, 200_000], min_length=1, description=f"Training tokens n of each mixture (> 0, at most {MAX_TOKENS:.0e}).")
    mode: Literal["replace", "add"] = Field("replace", description="replace: each budget n is split p synthetic / 1-p human; add: human_budget human tokens plus p/(1-p) times as many synthetic (token_budgets unused).")
    human_budget: int | None = Field(None, gt=0, le=MAX_TOKENS, description=f"Human tokens of every mixture in add mode (at most {MAX_TOKENS:.0e}).")
    generations: list[int] = Field([0], min_length=1, description="Which synthetic generations to mix (0-based).")
    seed: Seed = Field(0, description="Seed of the fixed block orders (mixtures are nested; 0 <= seed < 2**32).")
    draws: int = Field(1, ge=1, le=100, description="Independent draws of every mixture (1-100): draw 0 orders the blocks with mix.seed, draw d >= 1 with a seed derived from (mix.seed, d); every draw has its own students, so that intervals carry the variance over which blocks a mixture holds.")

    @field_validator("synthetic_fractions")
    @classmethod
    def _fractions_in_unit_interval(cls, values: list[float]) -> list[float]:
        for i, p in enumerate(values):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"item {i} is {p}; each synthetic fraction must be in [0, 1]")
        return values

    @field_validator("token_budgets")
    @classmethod
    def _budgets_positive(cls, values: list[int]) -> list[int]:
        for i, n in enumerate(values):
            if not 0 < n <= MAX_TOKENS:
                raise ValueError(f"item {i} is {n}; each token budget must be a positive number of tokens, at most {MAX_TOKENS:.0e}")
        return _distinct(values, "token budget")

    _distinct_fractions = field_validator("synthetic_fractions", mode="after")(lambda cls, v: _distinct(v, "fraction"))
    _distinct_generations = field_validator("generations")(lambda cls, v: _distinct(v, "generation"))


class StudentsConfig(Section):
    """Students: every model x mixture x seed is one train unit."""

    students: list[ModelConfig] = Field(default_factory=lambda: [ModelConfig()], min_length=1, description="Student models.")
    seeds: list[Seed] = Field([0], min_length=1, description="Training seeds per student and mixture (distinct; 0 <= seed < 2**32).")
    training: TrainingConfig = Field(default_factory=lambda: TrainingConfig(epochs=4.0), description="How every student trains.")

    _distinct_seeds = field_validator("seeds")(lambda cls, v: _distinct(v, "seed"))

    @model_validator(mode="after")
    def _students_train(self) -> "StudentsConfig":
        for i, student in enumerate(self.students):
            if student.finetune == "none":
                raise ValueError(f"students.{i}.finetune: none is for a teacher used as is; a student trains (full or lora)")
        return self


class EvaluateConfig(Section):
    """Held-out evaluation: summed token NLL over every human test token."""

    batch_size: int = Field(32, ge=1, description="Blocks per forward pass (speed and memory only: on a CPU the results do not depend on it).")
    precision: Literal["auto", "fp32", "bf16"] = Field("fp32", description="Autocast dtype for evaluation.")


class FitConfig(Section):
    """Scaling-law fits L_p(n) = E_p + A_p n^-alpha and the map onto the linear theory."""

    share: Literal["exponent", "nothing", "exponent_and_amplitude"] = Field("exponent", description="What the curves of one student share: exponent (one alpha; E_p and A_p per p, so the gap L_p - L_0 may change with n), nothing (alpha_p per p as well), or exponent_and_amplitude (one A too, which forces the same gap at every n; used only where the F test of one amplitude against A_p per p does not reject it, else A_p per p. That test has little power at 2-5 seeds: where the gap in fact grows with n, the plateau gap's interval then covers it in only 57-59% of runs, so keep the default unless the gap is known not to change).")
    bootstrap: int = Field(200, ge=0, description="Joint parametric-bootstrap draws of the plateaus E_p (fit.json plateau_draws), from which the linear theory takes the plateaus' covariance (0: none, and the theory's forms are not compared on plateaus). The intervals themselves are profile-likelihood intervals and need no draws.")
    accumulate_margin: float = Field(0.02, gt=0, description="Equivalence margin, nats/token per generation, for "
                                     "'accumulate stays bounded': it holds when the 90% interval of the loss's slope "
                                     "over generations lies inside ±margin. A slope interval that merely reaches 0 "
                                     "would reward noisy runs; set the margin before the run (0.02: at most 0.1 "
                                     "nats over five generations).")


class ReportConfig(Section):
    """The report: markdown + PNG figures."""

    title: str | None = Field(None, description="Report title; default from the run name.")
    theory_figures: bool = Field(True, description="Include theory-vs-simulation panels.")


class Config(Section):
    """A whole experiment. One config = one run directory `runs_dir/name`."""

    base: str | None = Field(None, description="Config this one extends (path relative to this file).")
    name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Run name: outputs go to runs_dir/name.")
    runs_dir: str = Field("runs", description="Where run directories live (created when missing).")
    stages: list[StageName] = Field(list(STAGES), min_length=1, description="Stages `collapse run` executes, in pipeline order.")
    launcher: Literal["local", "accelerate"] = Field("local", description="local: in this process; accelerate: train/generate units under `accelerate launch`.")
    accelerate_config: str = Field("configs/accelerate/cpu2.yaml", description="accelerate config file used with launcher: accelerate.")
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    packing: PackingConfig = Field(default_factory=PackingConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    mix: MixConfig = Field(default_factory=MixConfig)
    train: StudentsConfig = Field(default_factory=StudentsConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    fit: FitConfig = Field(default_factory=FitConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        for g in self.mix.generations:
            if not 0 <= g < self.generate.generations:
                raise ValueError(f"mix.generations has {g}; valid: 0..{self.generate.generations - 1} (generate.generations is {self.generate.generations})")
        if self.mix.mode == "add" and self.mix.human_budget is None:
            raise ValueError("mix.mode: add needs mix.human_budget (human tokens in every mixture)")
        if self.tokenizer.kind == "pretrained" and not (self.tokenizer.path or self.teacher.pretrained):
            raise ValueError("tokenizer.kind: pretrained needs tokenizer.path or teacher.model.pretrained")
        if self.generate.generations > 1 and not self.teacher.trains:
            raise ValueError(f"teacher.model.finetune: none cannot make later generations (generate.generations is "
                             f"{self.generate.generations}): teacher g>=1 trains on synthetic text; set finetune: full or lora")
        self._check_generation_fits_the_context()
        labels = [s.label for s in self.train.students]
        if len(set(labels)) != len(labels):
            raise ValueError(f"train.students have duplicate labels {labels}; give each a distinct name")
        order = [STAGES.index(s) for s in self.stages]
        if order != sorted(set(order)):
            raise ValueError(f"stages must be distinct and in pipeline order: {', '.join(STAGES)}")
        return self

    def _check_generation_fits_the_context(self) -> None:
        """A scratch teacher has packing.block_size positions; the last sampled token is never fed back."""
        if self.teacher.pretrained:
            return  # the checkpoint's own context, known once it is loaded
        gen, context = self.generate, self.packing.block_size
        prompt = 1 if gen.prompt == "bos" else gen.prompt_tokens
        if prompt + gen.max_new_tokens - 1 > context:
            raise ValueError(f"generate.max_new_tokens: {gen.max_new_tokens} new tokens after a {prompt}-token prompt "
                             f"do not fit the scratch teacher's context of {context} tokens (packing.block_size); "
                             f"use at most {context + 1 - prompt} or raise packing.block_size")

    # A run's saved config.yaml names the directory it was started in; read back from a copied or moved
    # run (or from another working directory, runs_dir being relative), it must stand for where it lies.
    _pinned_run_dir: Path | None = PrivateAttr(None)

    @property
    def run_dir(self) -> Path:
        return self._pinned_run_dir if self._pinned_run_dir is not None else Path(self.runs_dir) / self.name

    def at(self, run_dir: Path) -> "Config":
        """This config reading and writing `run_dir` instead of runs_dir/name (fingerprints unchanged)."""
        pinned = self.model_copy()
        pinned._pinned_run_dir = Path(run_dir)
        return pinned


def _valid_unless(problem: str | None, value: Any) -> Any:
    """A field validator's result: the value, or a ValueError saying what is wrong with it."""
    if problem:
        raise ValueError(problem)
    return value


def _distinct(values: list, what: str) -> list:
    seen = [v for i, v in enumerate(values) if v in values[:i]]
    if seen:
        raise ValueError(f"{what} {seen[0]!r} is listed twice; each {what} must appear once")
    return values
