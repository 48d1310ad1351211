"""Atomic checkpoints and model files (safetensors only: no pickle is ever loaded).

A *model file* is one ``.safetensors`` with a network's weights and, in its metadata, its
architecture (``architecture``: a name of :mod:`metaprior.models.registry`; ``model_config``:
that architecture's config) and anything else worth keeping (e.g. the meta-learning
configuration whose inner learning rate adaptation should reuse). Files that hold a
``pdnet_config`` instead are PDNets and load as such.

A *training checkpoint* is a folder ``checkpoints/step_XXXXXXX/`` with ``model.safetensors``,
``state.safetensors`` (outer-optimizer moments, RNG states) and ``state.json`` (step, config,
counters). It is written to a temporary folder, flushed, then renamed; ``checkpoints/latest``
names the newest complete one and is replaced atomically, so a run killed at any instant
leaves the last good checkpoint intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as serialize
from torch import Tensor, nn

from metaprior.models import architecture_of, build_model, config_from_dict
from metaprior.typing import Params


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a flushed temporary file and an atomic rename: a
    reader sees the old file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, an I/O error, a kill signal: no partial file stays
        tmp.unlink(missing_ok=True)
        raise


def canonical_safetensors(blob: bytes) -> bytes:
    """The same ``.safetensors`` bytes with a canonical header: keys (metadata included) in
    sorted order, compact JSON, padded with spaces to 8 bytes. The tensor data is unchanged,
    so equal tensors and metadata always give equal files (and equal checksums)."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    metadata = header.pop("__metadata__", None)
    ordered = dict(sorted(header.items()))
    if metadata:
        ordered = {"__metadata__": dict(sorted(metadata.items())), **ordered}
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + n:]


def save_tensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str]
                 ) -> None:
    """Write a ``.safetensors`` file atomically (as :func:`write_bytes_atomic`), with
    deterministic bytes (:func:`canonical_safetensors`) and the permissions of any new file
    (0666 less the umask). The file is serialised in memory: no writer but ours touches the
    folder."""
    blob = serialize({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                     metadata=dict(sorted(metadata.items())) or None)
    write_bytes_atomic(path, canonical_safetensors(blob))


def save_model(path: str | Path, model: nn.Module, params: Params | None = None,
               metadata: dict | None = None) -> Path:
    """Write a model file atomically. ``params`` (default: the model's own) are the weights,
    checked against the model; ``metadata`` is stored beside them, its ``architecture`` and
    ``model_config`` taken from the model itself."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"model files end in .safetensors, got {path}")
    weights = params if params is not None else dict(model.named_parameters())
    shapes = {k: v.shape for k, v in model.named_parameters()}
    if set(weights) != set(shapes):
        raise ValueError(f"save_model: params' names {sorted(set(weights) ^ set(shapes))[:3]} do "
                         f"not match the model's parameters: {path} not written")
    for name, value in weights.items():
        if value.shape != shapes[name] or value.dtype != torch.float32:
            raise ValueError(f"save_model: params' {name!r} is {value.dtype} "
                             f"{tuple(value.shape)}, the model's float32 {tuple(shapes[name])} "
                             f"(the parameters of another model?): {path} not written")
    bad = [k for k, v in weights.items() if not bool(torch.isfinite(v.detach()).all())]
    if bad:
        raise FloatingPointError(f"model weights {bad[:3]} are not finite (a diverged run or a "
                                 f"non-finite learning rate): {path} not written")
    architecture = architecture_of(model)
    given = (metadata or {}).get("architecture", architecture)
    if given != architecture:
        raise ValueError(f"save_model: metadata 'architecture' {given!r} is not the model's "
                         f"({architecture!r}): drop it (the file would not load)")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in
            (metadata or {}).items()}
    # written from the model itself, whatever ``metadata`` holds (e.g. a loaded file's own)
    meta.update({"architecture": architecture,
                 "model_config": json.dumps(model.config.__dict__, sort_keys=True)})
    save_tensors(path, dict(weights), meta)
    return path


class UnreadableFileError(ValueError):
    """A file that is not a readable ``.safetensors`` (empty, truncated, corrupt)."""


def _open(path: str | Path, device="cpu"):
    try:
        return safe_open(str(path), framework="pt", device=str(device))
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise UnreadableFileError(f"{path} is a folder, not a .safetensors file") from None
    except Exception as e:  # safetensors raises its own error types (header, size, JSON)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UnreadableFileError(f"{path} is not a readable .safetensors file ({first[:200]})"
                                  ) from None


def read_metadata(path: str | Path) -> dict:
    """The file's metadata, each value JSON-decoded where it is JSON."""
    with _open(path) as f:
        meta = f.metadata() or {}
    out = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def load_tensors(path: str | Path, device="cpu") -> dict[str, Tensor]:
    """All tensors of a ``.safetensors`` file (a one-line :class:`UnreadableFileError` if the
    file is damaged)."""
    with _open(path, device) as f:
        try:
            return {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise UnreadableFileError(f"{path} is damaged ({str(e).splitlines()[0][:200]})"
                                      ) from None


def resolve_model_path(path: str | Path) -> Path:
    """A model file from a file path, a checkpoint folder, a run folder (its latest) or the
    name of a model that :mod:`metaprior.pretrained` finds."""
    from metaprior import pretrained

    name = str(path)
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists() and name in pretrained.available():
        return pretrained.path(name)
    if (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    latest = latest_checkpoint(path)
    if latest is not None:
        return latest / "model.safetensors"
    if path.is_dir():
        raise FileNotFoundError(f"{path} holds no model (no model.safetensors, no checkpoint): "
                                f"give a .safetensors file, a checkpoint folder or a meta-train "
                                f"output folder")
    if path.suffix == ".safetensors" or len(path.parts) > 1:
        raise FileNotFoundError(f"no model at {path}: give a .safetensors file, a checkpoint "
                                f"folder, a meta-train output folder or a model name")
    raise FileNotFoundError(pretrained.unknown_name_message(name))


def model_spec(meta: dict, path: str | Path = "model") -> tuple[str, object]:
    """(architecture name, config) recorded in a model file's metadata."""
    if "architecture" in meta:
        name, values, key = meta["architecture"], meta.get("model_config"), "model_config"
    elif "pdnet_config" in meta:
        name, values, key = "pdnet", meta["pdnet_config"], "pdnet_config"
    else:
        raise ValueError(f"{path} has no 'architecture' metadata: not a metaprior model file")
    try:
        return name, config_from_dict(name, values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: its {key!r} metadata is invalid ({e})") from None


def load_model(path: str | Path, device="cpu") -> tuple[nn.Module, dict]:
    """Build the network stored in a model file (or checkpoint / run folder), whatever its
    registered architecture. Returns (model, metadata)."""
    path = resolve_model_path(path)
    meta = read_metadata(path)
    name, config = model_spec(meta, path)
    try:
        _check_sizes_against_header(path, name, config)
        model = build_model(name, config)
    except ValueError as e:
        raise ValueError(str(e) if str(e).startswith(str(path)) else
                         f"{path}: its model config is invalid ({e})") from None
    state = load_tensors(path)
    expected = dict(model.named_parameters())
    missing = set(expected) ^ set(state)
    if missing:
        raise ValueError(f"{path} does not match its {name} config (tensors "
                         f"{sorted(missing)[:3]})")
    for k, p in expected.items():
        t = state[k]
        if t.dtype != torch.float32 or t.shape != p.shape:
            raise ValueError(f"{path}: tensor {k} is {t.dtype} {tuple(t.shape)}, a model of "
                             f"this config holds float32 {tuple(p.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{path} holds non-finite weights ({k}): the file is damaged or "
                             f"its run diverged; use another model file")
    model.load_state_dict(state)
    return model.to(device), meta


def _check_sizes_against_header(path: str | Path, name: str, config) -> None:
    """Refuse a ``config`` whose sizes disagree with the tensors the file at ``path`` holds,
    reading only the file's header (names, shapes, dtypes), so crafted metadata is refused
    before anything of its size is allocated. PDNet: depth, width and kernel size; HQSNet:
    its iteration count (its other sizes are fixed by the published FFDNet)."""
    with _open(path) as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    key = "'model_config'" if "model_config" in read_metadata(path) else "'pdnet_config'"
    if name == "hqs":
        k = config.iterations
        for tensor in ("log_sigma", "log_gamma"):
            if shapes.get(tensor) != (k,):
                raise ValueError(f"{path}: its {key} says {k} iterations, tensor {tensor} is "
                                 f"{shapes.get(tensor)}: the file is damaged or not an HQSNet")
        return
    if name != "pdnet":
        return
    layers = sum(1 for k in shapes if re.fullmatch(r"layers\.\d+\.weight", k))
    depth, width, k = config.depth, config.width, config.kernel_size
    if depth != layers:
        raise ValueError(f"{path}: its {key} says depth {depth}, the file holds "
                         f"{layers} layer(s): the file is damaged or not a PDNet")
    for tensor, shape in shapes.items():
        expected = ((width, 1, k, k) if tensor.endswith(".weight") else ())
        if shape != expected or dtypes[tensor] != "F32":
            raise ValueError(f"{path}: tensor {tensor} is {dtypes[tensor]} {shape}, a model of "
                             f"its {key} (width {width}, kernel_size {k}) holds "
                             f"float32 {expected}")


# --- training checkpoints -------------------------------------------------------------------

def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    pointer = checkpoint_dir(run_dir) / "latest"
    if not pointer.is_file():
        return None
    target = checkpoint_dir(run_dir) / pointer.read_text().strip()
    return target if (target / "state.json").is_file() else None


def complete_checkpoints(run_dir: str | Path) -> list[str]:
    """The names of the complete checkpoints (``step_*`` folders with a ``state.json``) of
    ``run_dir``, whatever ``checkpoints/latest`` names."""
    return sorted(p.name for p in checkpoint_dir(run_dir).glob("step_*")
                  if (p / "state.json").is_file())


def unnamed_checkpoints(run_dir: str | Path) -> str | None:
    """Where ``checkpoints/latest`` names no complete checkpoint but complete ones are there:
    a one-line message naming them and how to resume from one (else None)."""
    folder, complete = checkpoint_dir(run_dir), complete_checkpoints(run_dir)
    if not complete:
        return None
    pointer = folder / "latest"
    named = pointer.read_text().strip() if pointer.is_file() else "nothing"
    return (f"--resume: {pointer} names {named}, which is not a complete checkpoint, but "
            f"{folder} holds {', '.join(complete)}: write one of those names into {pointer} "
            f"to resume from it")


def read_state(checkpoint: Path) -> dict:
    """A checkpoint's ``state.json``; a damaged one is a one-line error naming it."""
    path = Path(checkpoint) / "state.json"
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is damaged ({e}): point {path.parent.parent / 'latest'} at "
                         f"an earlier checkpoint folder to resume from it") from None


def save_checkpoint(
    run_dir: str | Path, step: int, model: nn.Module, tensors: dict[str, Tensor], state: dict,
    model_metadata: dict | None = None, keep: int = 2,
) -> Path:
    """Write ``checkpoints/step_{step:07d}`` atomically and point ``latest`` at it."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    final = root / name
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_model(tmp / "model.safetensors", model, metadata=model_metadata)
        save_tensors(tmp / "state.safetensors", tensors, {})
        write_bytes_atomic(tmp / "state.json", json.dumps(state, indent=1, sort_keys=True
                                                          ).encode())
        _fsync_dir(tmp)
    except BaseException:  # e.g. non-finite weights: no half-written checkpoint stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    write_bytes_atomic(root / "latest", name.encode())
    _fsync_dir(root)
    # Older checkpoints beyond ``keep`` go, and so do later-numbered ones: they belong to an
    # earlier run in this folder that this one (started afresh) replaces.
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and p.name <= name)
    stale = [p for p in root.glob("step_*") if p.is_dir() and p.name > name]
    for old in (done[:-keep] if keep > 0 else []) + stale:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Tensor], dict]:
    """(model weights, state tensors, state JSON) of a checkpoint folder."""
    return (load_tensors(path / "model.safetensors"), load_tensors(path / "state.safetensors"),
            read_state(path))
