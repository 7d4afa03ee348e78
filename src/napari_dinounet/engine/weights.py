"""Reading DINOv3 weight files safely, detecting their format and mapping their keys to timm's.

Three layouts are accepted, told apart by their keys (never by the file name):

- ``official``: Meta's ``.pth`` (``storage_tokens``, ``blocks.N.attn.qkv.*``, ``ls1.gamma``, ``rope_embed.periods``);
- ``hf``: a Hugging Face ``transformers`` folder (``config.json`` + ``model.safetensors``; keys
  ``embeddings.*``, ``layer.N.*``);
- ``timm``: timm's own state dict (``reg_token``, ``blocks.N.attn.q_bias``, ``gamma_1``), as
  ``.safetensors`` or ``.pth``.

``.pth`` files are read with ``torch.load(weights_only=True)``, which refuses pickled code; every problem
becomes a :class:`~.errors.WeightsError` that names the file and the fix.
"""

from __future__ import annotations

import hashlib
import io
import json
import numbers
import pickle
import pickletools
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import WeightsError
from .values import is_number

GET_WEIGHTS = (
    "DINOv3 weights come from Meta's download form (ai.meta.com/resources/models-and-libraries/dinov3-downloads) "
    "or the gated Hugging Face repos facebook/dinov3-*"
)


@dataclass
class WeightsFile:
    """A weights file (or HF folder) read into memory, with its keys mapped to timm's DINOv3 ``Eva``.

    state_dict: timm keys -> tensors (CPU, possibly memory-mapped).
    rope_periods: the checkpoint's RoPE periods (official files store them, bf16-rounded), (head_dim/4,);
    None when the file has none and timm's own fp32 periods apply.
    head_dim: attention head width when the file tells it (RoPE periods, config.json), else None; checked
    against the tensors' width (see :func:`head_width`).
    """

    path: Path
    format: str
    state_dict: dict[str, torch.Tensor]
    rope_periods: torch.Tensor | None
    head_dim: int | None
    sha256: str


def read_weights(source: str | Path) -> WeightsFile:
    """Read a Meta ``.pth``, an HF folder or a timm-layout file; raise WeightsError if it is not usable.

    Besides the format, checked here: every tensor is floating point and finite (:func:`check_values`), and a
    folder's ``config.json`` agrees with the tensors (:func:`head_width`).
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise WeightsError(
            f"{path}: no such file or folder. Give the path of a DINOv3 weights file (Meta's .pth, a timm "
            f".safetensors/.pth) or of a Hugging Face folder (config.json + model.safetensors). {GET_WEIGHTS}."
        )
    if path.is_dir():
        files, config = _hf_folder(path)
    else:
        files, config = [path], None
    per_file = {file: read_tensors(file) for file in files}
    raw = {key: tensor for tensors in per_file.values() for key, tensor in tensors.items()}
    fmt = detect_format(raw, path)
    for file, tensors in per_file.items():
        check_values(tensors, file)
    if fmt == "official":
        state_dict, periods = official_to_timm(raw)
    elif fmt == "hf":
        try:
            state_dict, periods = hf_to_timm(raw), None
        except WeightsError as err:
            raise WeightsError(f"{path}: {err}") from None
    else:
        state_dict, periods = raw, None
    head_dim = head_width(state_dict, periods, config, path)
    return WeightsFile(path, fmt, state_dict, periods, head_dim, sha256_of(files))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one ``.safetensors`` or PyTorch file, whatever its name; WeightsError if it is neither."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as err:
        raise WeightsError(f"{path}: cannot be opened ({err.strerror}); check that it is readable") from None
    if not head:
        raise WeightsError(f"{path}: the file is empty; download it again")
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, then a JSON header
        state = _safetensors_load(path)
    elif head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save zip archive / legacy pickle
        state = _torch_load(path, zipped=head.startswith(b"PK"))
    else:
        kind = "a text file" if _looks_like_text(head) else "not a PyTorch or safetensors file"
        raise WeightsError(f"{path}: {kind}, not model weights. Give a DINOv3 .pth or .safetensors file.")
    return _tensor_dict(state, path)


def _torch_load(path: Path, zipped: bool):
    # torch.load reads any path named *.safetensors with safetensors, whatever it holds. Such a file is
    # refused, but it goes through the weights-only unpickler first (given an open file, onto the meta device:
    # no tensor bytes are read), so that pickled code is called code, not a naming slip
    misnamed = path.name.lower().endswith(".safetensors")
    try:
        if misnamed:
            with open(path, "rb") as f:
                torch.load(f, map_location="meta", weights_only=True)
            raise WeightsError(f"{path}: this is a PyTorch file with a .safetensors name; rename it to .pth")
        # mmap needs the zip format; it keeps a 27 GB 7B file out of RAM until tensors are copied
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():
            raise _corrupt(path, _first_line(err)) from None
        if not holds_python_objects(path, zipped):
            raise _corrupt(path, "not a valid pickle") from None
        raise WeightsError(
            f"{path}: refused: the file holds Python objects or code, not only tensors, and loading it could "
            "run that code. If you trust its origin, re-save just its tensors, e.g. "
            "safetensors.torch.save_file({k: v.contiguous() for k, v in state_dict.items()}, 'weights.safetensors')."
        ) from None
    # the weights-only unpickler meets random bytes with any of these (a memo or stack index out of range, a
    # length field asking for petabytes)
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, MemoryError, OverflowError) as err:
        raise _corrupt(path, _first_line(err)) from None


def _corrupt(path: Path, detail: str) -> WeightsError:
    return WeightsError(
        f"{path}: cannot be read as a PyTorch file, it is truncated or corrupt ({detail}); download it again"
    )


# opcodes that name a Python object (module.attribute) for the unpickler to import and call
_GLOBAL_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST"}
# the pickles of a state dict are small (the tensors' bytes lie elsewhere): 64 MB covers any real one
_PICKLE_LIMIT = 64 << 20


def holds_python_objects(path: Path, zipped: bool) -> bool:
    """Whether a file torch refused holds well-formed pickles that name Python objects (code, or classes
    beyond tensors) rather than damaged or random bytes. Parses the opcodes only; runs nothing.

    zipped: a torch.save zip archive, whose ``<name>/data.pkl`` is the one pickle; else the legacy format,
    up to four pickles in a row (magic number, version, system info, the object) before the tensor bytes.
    """
    try:
        if zipped:
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
                with archive.open(name) as member:
                    head = member.read(_PICKLE_LIMIT)
        else:
            with open(path, "rb") as f:
                head = f.read(_PICKLE_LIMIT)
    except (OSError, zipfile.BadZipFile, StopIteration):
        return False
    # in memory, so that a random length field cannot make the reader allocate gigabytes
    stream = io.BytesIO(head)
    for _ in range(1 if zipped else 4):
        try:  # the whole pickle must parse up to its STOP: random bytes soon hit an unknown opcode
            names = [opcode.name for opcode, _, _ in pickletools.genops(stream)]
        except ValueError:  # an unknown opcode, a bad argument or bytes ending before STOP
            return False
        if _GLOBAL_OPCODES.intersection(names):
            return True
    return False


def _safetensors_load(path: Path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(
            f"{path}: cannot be read as safetensors, it is truncated or corrupt ({_first_line(err)}); download it again"
        ) from None


def _tensor_dict(state, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap training checkpoints ({'model': {...}, 'epoch': 3}) and keep the tensors."""
    for wrapper in ("state_dict", "model", "model_ema", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    if not tensors:
        raise WeightsError(f"{path}: holds no named tensors (found a {type(state).__name__}); it is not a state dict")
    return tensors


# Meta's per-block masks of the fused qkv bias (1 for q and v, 0 for k): its forward casts them to the bias's
# dtype, so integer or boolean ones are as good as float ones
_BIAS_MASK = re.compile(r".*\.qkv\.bias_mask")


def check_values(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """WeightsError unless every tensor is floating point (any width: fp32, fp16, bf16) and finite.

    Integer tensors are refused rather than cast (a wrong conversion truncates weights to whole numbers);
    only bias masks may be integer or boolean. Reads every value once (a 7B file: tens of seconds).
    """
    for key, tensor in tensors.items():
        if not tensor.is_floating_point() and not _BIAS_MASK.fullmatch(key):
            raise WeightsError(
                f"{path}: tensor {key} holds {str(tensor.dtype).removeprefix('torch.')} values, but DINOv3 weights "
                "are floating point (float32, float16 or bfloat16); the file was converted wrongly: download it again"
            )
    # a float64 sum is finite exactly when every value is: it cannot overflow, and NaN or inf propagate;
    # cheaper than an isfinite mask of each tensor
    bad = [key for key, t in tensors.items() if t.is_floating_point() and not t.sum(dtype=torch.float64).isfinite()]
    if bad:
        count = sum(int((~tensors[key].isfinite()).sum()) for key in bad)
        raise WeightsError(
            f"{path}: {count} values are NaN or infinite, in {len(bad)} tensor{'s' if len(bad) > 1 else ''} "
            f"(the first: {bad[0]}); the file is damaged: download it again"
        )


def detect_format(state: dict[str, torch.Tensor], path: Path) -> str:
    """'official', 'hf' or 'timm' from the keys; WeightsError for any other network."""
    if "storage_tokens" in state:
        return "official"
    if any(k.removeprefix("model.") == "embeddings.patch_embeddings.weight" for k in state):
        return "hf"
    if "reg_token" in state and "blocks.0.attn.qkv.weight" in state:
        return "timm"
    sample = ", ".join(list(state)[:5])
    hint = " It looks like DINOv2 or another ViT with absolute position embeddings." if "pos_embed" in state else ""
    raise WeightsError(
        f"{path}: not a DINOv3 ViT checkpoint ({len(state)} tensors, keys like {sample}).{hint} "
        f"Give DINOv3 weights (Meta's .pth, a Hugging Face dinov3 folder or a timm DINOv3 file). {GET_WEIGHTS}."
    )


_OFFICIAL_RENAMES = (
    ("storage_tokens", "reg_token"),
    (".ls1.gamma", ".gamma_1"),
    (".ls2.gamma", ".gamma_2"),
    (".mlp.w1.", ".mlp.fc1_g."),  # SwiGLU: w3(silu(w1 x) * w2 x)
    (".mlp.w2.", ".mlp.fc1_x."),
    (".mlp.w3.", ".mlp.fc2."),
)
# pretraining-only tensors (mask token, 7B's local-crop CLS norm, EUPE distillation heads); the periods and
# bias masks are used below
_OFFICIAL_DROPPED = re.compile(r"mask_token|rope_embed\.periods|local_cls_norm\..*|projectors\..*|.*\.qkv\.bias_mask")


def official_to_timm(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Map Meta's keys to timm's; returns (timm state dict, RoPE periods or None).

    The fused ``qkv.bias`` is multiplied by its ``bias_mask`` (as Meta's forward does) and split into
    timm's ``q_bias``/``v_bias``; the k part is dropped: adding the same vector to every key shifts each
    row of attention logits by a constant, which softmax ignores.
    """
    out = {}
    for key, value in state.items():
        if _OFFICIAL_DROPPED.fullmatch(key):
            continue
        if key.endswith(".attn.qkv.bias"):
            mask = state.get(key + "_mask")
            bias = value * mask.to(value.dtype) if mask is not None else value
            q_bias, _, v_bias = bias.chunk(3)
            stem = key.removesuffix("qkv.bias")
            out[stem + "q_bias"], out[stem + "v_bias"] = q_bias, v_bias
            continue
        for old, new in _OFFICIAL_RENAMES:
            key = key.replace(old, new)
        out[key] = value
    return out, state.get("rope_embed.periods")


_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
}
_HF_BLOCK = {
    "attention.o_proj.": "attn.proj.",
    "attention.q_proj.bias": "attn.q_bias",
    "attention.v_proj.bias": "attn.v_bias",
    "layer_scale1.lambda1": "gamma_1",
    "layer_scale2.lambda1": "gamma_2",
    "mlp.down_proj.": "mlp.fc2.",
    "mlp.gate_proj.": "mlp.fc1_g.",
}
_HF_LAYER = re.compile(r"layer\.(\d+)\.(.+)")


def hf_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map Hugging Face ``DINOv3ViTModel`` keys (``layer.N.*``, or ``model.layer.N.*``) to timm's.

    q/k/v projections are concatenated into ``qkv.weight``; the k bias is dropped (softmax ignores it,
    see :func:`official_to_timm`); a missing q or v bias next to a present one is zero.
    """
    state = {k.removeprefix("model."): v for k, v in state.items()}
    gated = any(".mlp.gate_proj." in k for k in state)
    up = "mlp.fc1_x." if gated else "mlp.fc1."
    out, qkv = {}, {}
    for key, value in state.items():
        if key == "embeddings.mask_token" or key.endswith("attention.k_proj.bias"):
            continue
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
            continue
        match = _HF_LAYER.fullmatch(key)
        if not match:
            out[key] = value  # norm.*, or an unknown key the strict load will report
            continue
        block, rest = f"blocks.{match[1]}.", match[2]
        if rest in ("attention.q_proj.weight", "attention.k_proj.weight", "attention.v_proj.weight"):
            qkv.setdefault(block, {})[rest[10]] = value
            continue
        rest = rest.replace("mlp.up_proj.", up)
        for old, new in _HF_BLOCK.items():
            rest = rest.replace(old, new)
        out[block + rest] = value
    for block, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise WeightsError(f"block {block[:-1]} lacks some of its q/k/v projections; the file is incomplete")
        out[block + "attn.qkv.weight"] = torch.cat([parts["q"], parts["k"], parts["v"]])
        for have, lack in (("q_bias", "v_bias"), ("v_bias", "q_bias")):
            if block + "attn." + have in out and block + "attn." + lack not in out:
                out[block + "attn." + lack] = torch.zeros_like(out[block + "attn." + have])
    return out


def _hf_folder(path: Path) -> tuple[list[Path], dict | None]:
    """The weight files of a Hugging Face (or timm Hub) folder and its parsed config.json."""
    config_path = path / "config.json"
    config = None
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise WeightsError(f"{config_path}: not valid JSON ({err}); download it again") from None
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return [single], config
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as err:
            raise WeightsError(f"{index}: not a valid safetensors index ({err}); download it again") from None
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise WeightsError(f"{path}: weight shards missing: {', '.join(missing)}; download the whole folder")
        return [path / s for s in shards], config
    raise WeightsError(
        f"{path}: this folder has no weights (no model.safetensors). Download the whole Hugging Face repo "
        "(e.g. `hf download facebook/dinov3-vits16-pretrain-lvd1689m --local-dir FOLDER`) or give a weights file."
    )


def head_width(state_dict: dict[str, torch.Tensor], periods: torch.Tensor | None, config, path: Path) -> int | None:
    """The attention head width the file tells, checked against its tensors; None when it tells none.

    Two sources: the RoPE periods (head_dim/4 of them, in Meta's files) and config.json (any JSON value,
    or None outside a folder): hidden_size / num_attention_heads. config.json must agree with the tensors'
    width D and with the periods; it is the only source for HF folders, whose tensors do not show the head
    count.
    """
    patch = state_dict.get("patch_embed.proj.weight")
    if patch is None:
        return None  # not a complete DINOv3 checkpoint: infer_architecture says so
    width = patch.shape[0]
    from_periods = 4 * periods.numel() if periods is not None else None
    if from_periods and width % from_periods:
        raise WeightsError(
            f"{path}: its RoPE periods are for heads of width {from_periods}, which does not divide its width "
            f"{width}; the file is damaged: download it again"
        )
    if not isinstance(config, dict):
        return from_periods
    where = path / "config.json"
    for key, expected in (("layer_norm_eps", 1e-5), ("rope_theta", 100.0), ("patch_size", 16)):
        value = config.get(key, expected)
        if not is_number(value) or abs(value - expected) > 1e-12:
            raise WeightsError(
                f"{where}: {key}={value!r}, but DINOv3 backbones use {expected}; this is not a supported DINOv3 model"
            )
    hidden, heads = (_positive_int(config, key, where) for key in ("hidden_size", "num_attention_heads"))
    if hidden is not None and hidden != width:
        raise WeightsError(
            f"{where}: hidden_size is {hidden}, but the weights are {width} wide; this config.json belongs to "
            "another model or was edited: download it again"
        )
    if heads is None:
        return from_periods
    if width % heads or width // heads % 4:
        raise WeightsError(
            f"{where}: num_attention_heads {heads} does not split the width {width} into heads whose width is a "
            "multiple of 4 (as DINOv3's RoPE needs); config.json is wrong: download it again"
        )
    if from_periods and width // heads != from_periods:
        raise WeightsError(
            f"{where}: num_attention_heads {heads} means heads of width {width // heads}, but the weights' RoPE "
            f"periods are for {width // from_periods} heads of width {from_periods}; config.json is wrong: "
            "download it again"
        )
    return width // heads


def _positive_int(config: dict, key: str, where: Path) -> int | None:
    value = config.get(key)
    if value is not None and not (is_number(value, numbers.Integral) and value > 0):
        raise WeightsError(f"{where}: {key} is {value!r}, not a positive whole number; download config.json again")
    return value


def sha256_of(files: list[Path]) -> str:
    """SHA-256 of the files' bytes, concatenated in order, read in chunks (a 7B file is 27 GB)."""
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def _looks_like_text(head: bytes) -> bool:
    return all(b >= 32 or b in b"\t\n\r" for b in head)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= 120 else line[:117] + "..."
