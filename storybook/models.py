"""Base models: find them (hub id, local diffusers folder or the embedded tiny model), load them, fingerprint them."""

import hashlib
import json
import os
import re
import warnings
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from storybook.errors import ModelError
from storybook.storage import MINI_MODEL, atomic_write_text
from storybook.weights import damaged_file

TINY_MODEL = "tiny"  # alias of the embedded tiny pipeline, committed (`storybook models make-tiny` rebuilds it)
MINI_MODEL_FOLDER = Path(__file__).resolve().parent / "weights" / MINI_MODEL
TINY_MODEL_FOLDER = Path(__file__).resolve().parent / "weights" / TINY_MODEL
SDXL_PIPELINES = {"StableDiffusionXLPipeline"}
SD_PIPELINES = {"StableDiffusionPipeline"} | SDXL_PIPELINES  # text-to-image: a page is drawn from its prompt


def resolve_model(model: str, home: Path) -> str:
    """Return what `from_pretrained` should load for `model`: the tiny model's folder, a local folder, or a hub id.

    Raises ModelError when `model` looks like a local path but holds no diffusers pipeline.
    """
    if model == TINY_MODEL:
        return str(TINY_MODEL_FOLDER)
    if model == MINI_MODEL:
        return str(MINI_MODEL_FOLDER)
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")):
        if not (path / "model_index.json").is_file():
            raise ModelError(
                f"{path} is not a diffusers pipeline folder (no model_index.json). Give a folder saved with "
                "`save_pretrained`, a hub id such as 'stable-diffusion-v1-5/stable-diffusion-v1-5', or 'tiny'."
            )
        return str(path.resolve())
    return model


def local_snapshot(source: str, patterns: list[str] | None = None) -> Path | None:
    """The local folder of `source`: the folder itself, or a hub id's snapshot already in the Hugging Face cache
    (never downloaded; `patterns` are the files wanted from it). None when it is neither."""
    if Path(source).expanduser().is_dir():
        return Path(source).expanduser().resolve()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, local_files_only=True, allow_patterns=patterns))
    except Exception:  # huggingface_hub raises several kinds for "not in the cache" (and for a malformed id)
        return None


def check_model_on_disk(model: str, home: Path) -> str:
    """Where base `model`'s pipeline is on this machine (the tiny model is built on first use). Raises ModelError
    naming what was looked for and how to get it when it is not here."""
    model_path = resolve_model(model, home)
    if model in (TINY_MODEL, MINI_MODEL) or Path(model_path).is_dir():
        return model_path
    snapshot = local_snapshot(model, ["model_index.json"])
    if snapshot is None or not (snapshot / "model_index.json").is_file():
        raise ModelError(
            f"The base model {model!r} is not a local diffusers folder and is not in the Hugging Face cache. On a "
            f"machine with network run `hf download {model}`, or give a local folder saved with `save_pretrained`."
        )
    return str(snapshot)


def load_tokenizer(model: str, home: Path) -> PreTrainedTokenizerBase:
    """The tokenizer of base `model` (to choose identifier tokens), without loading any weights."""
    try:
        return AutoTokenizer.from_pretrained(resolve_model(model, home), subfolder="tokenizer")
    except (OSError, ValueError) as error:
        raise ModelError(
            f"Could not load the tokenizer of {model!r} ({error}). Pass a local diffusers folder, a downloaded hub "
            "id, or 'tiny'."
        ) from error


def unet_parameter_count(model_path: str) -> int:
    """The UNet's parameter count from its config alone (built on the meta device: no weights read, nothing
    downloaded). Raises ModelError when its config is not on this machine."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    try:
        with warnings.catch_warnings():  # huggingface_hub's deprecation notes about diffusers' own arguments
            warnings.simplefilter("ignore")
            config = UNet2DConditionModel.load_config(model_path, subfolder="unet", local_files_only=True)
    except (OSError, ValueError):
        raise ModelError(f"{model_path} has no unet/config.json here: is the download complete?") from None
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    return sum(parameter.numel() for parameter in unet.parameters())


def model_family(model_path: str) -> str:
    """'sd' (SD 1.x/2.x) or 'sdxl', read from the pipeline's model_index.json (a folder's, or a hub id's in the
    cache) before any weights load.

    Raises ModelError for pipelines storybook cannot draw pages with (other families, image-to-image pipelines).
    """
    folder = Path(model_path) if Path(model_path).is_dir() else local_snapshot(model_path, ["model_index.json"])
    if folder is None or not (folder / "model_index.json").is_file():
        return "sd"  # a hub id not downloaded yet; loading will tell
    class_name = pipeline_class(folder)
    if class_name not in SD_PIPELINES:
        raise ModelError(
            f"{model_path} is a {class_name}; storybook draws pages from their prompts with Stable Diffusion 1.x/2.x "
            "and SDXL text-to-image pipelines (StableDiffusionPipeline, StableDiffusionXLPipeline), not "
            "image-to-image ones such as the SDXL refiner. Give the base model's folder or hub id."
        )
    return "sdxl" if class_name in SDXL_PIPELINES else "sd"


def pipeline_class(folder: Path) -> str:
    """The pipeline class the model_index.json of diffusers folder `folder` names, e.g. 'StableDiffusionPipeline'.
    Raises ModelError when it has none, or it cannot be read."""
    record = folder / "model_index.json"
    try:
        class_name = json.loads(record.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):  # missing, not JSON (or UTF-8), not a JSON object
        class_name = None
    if not isinstance(class_name, str):
        raise ModelError(
            f"{folder} is not a diffusers pipeline folder ({record} is missing or damaged): give a folder saved with "
            "`save_pretrained`, or download it again."
        )
    return class_name


def config_class(config: Path) -> str:
    """The model class the config.json at `config` names (transformers' first 'architectures' entry, else diffusers'
    '_class_name'); '' when it names none or cannot be read."""
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
        named = (data.get("architectures") or [None])[0] or data.get("_class_name")
    except (OSError, ValueError, AttributeError, TypeError, IndexError, KeyError):
        return ""
    return named if isinstance(named, str) else ""


def parse_device(device: str) -> torch.device:
    """The torch device named `device`. Raises ModelError for a name torch does not know."""
    try:
        return torch.device(device)
    except RuntimeError:
        raise ModelError(f"Unknown device {device!r}: use cuda, cuda:1, mps or cpu.") from None


def pick_device(device: str | None = None) -> torch.device:
    """The device to run on: `device` if given, else CUDA, else Apple MPS, else the CPU. Raises ModelError for a
    device name torch does not know or a device this machine does not have."""
    if device:
        chosen = parse_device(device)
        available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
        if not available.get(chosen.type, True):  # other backends (xpu, ...): torch tells when they are missing
            raise ModelError(
                f"This machine has no {chosen.type} device: use --device cpu, or `storybook config --device cpu` when "
                "the data root's config names it."
            )
        if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
            raise ModelError(f"There is no {device}: this machine has {torch.cuda.device_count()} CUDA device(s).")
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, dtype: str | None = None) -> torch.dtype:
    """The weight dtype: `dtype` ('fp32', 'fp16', 'bf16') if given, else fp16 on CUDA and MPS and fp32 on the CPU."""
    names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype:
        if dtype not in names:
            raise ModelError(f"Unknown dtype {dtype!r}: use one of {', '.join(names)}.")
        return names[dtype]
    return torch.float32 if device.type == "cpu" else torch.float16


def load_pipeline(
    model: str,
    home: Path,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    components: dict[str, torch.nn.Module] | None = None,
) -> tuple[DiffusionPipeline, str]:
    """Load `model` (see `resolve_model`) on `device` in `dtype` (the defaults: `pick_device()`, `pick_dtype`; a
    caller that honours the data root's config resolves them from it first, as the renderer does); return the
    pipeline and its resolved path. `components` (e.g. a DreamBooth identity's {"unet": ...}) take the place of the
    model's own, which are then never loaded.

    Raises ModelError with what was looked for and how to provide it when the weights are not available.
    """
    model_path = resolve_model(model, home)
    model_family(model_path)
    device = device or pick_device()
    try:
        pipeline = DiffusionPipeline.from_pretrained(
            model_path, dtype=dtype or pick_dtype(device), safety_checker=None, **(components or {})
        )
    except (OSError, ValueError) as error:
        folder = local_snapshot(model_path)
        if folder is not None:  # its files are here: damaged, or some are missing
            raise ModelError(
                f"The base model {model} in {folder} cannot be loaded ({damaged_file(folder) or error}): download it "
                f"again (`hf download {model}`) or save it again with `save_pretrained`, or use another with --model."
            ) from None
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise ModelError(
            f"Could not load the base model {model!r}: it is not a local diffusers folder and is not in the Hugging "
            f"Face cache{' (HF_HUB_OFFLINE is set, so nothing is downloaded)' if offline else ''}. Download it on a "
            f"machine with network (`hf download {model}`), pass a local folder with --model, or use --model tiny. "
            f"Details: {error}"
        ) from error
    if type(pipeline).__name__ not in SD_PIPELINES:
        raise ModelError(
            f"{model} loads as {type(pipeline).__name__}; storybook needs Stable Diffusion 1.x/2.x or SDXL."
        )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device), model_path


def model_folder(model_path: str, patterns: list[str] | None = None) -> Path:
    """The local folder holding `model_path`'s files (a hub id resolves to its cached snapshot, of the files matching
    `patterns`, by default model_index.json and the UNet's)."""
    if Path(model_path).is_dir():
        return Path(model_path)
    from huggingface_hub import snapshot_download

    wanted = patterns or ["model_index.json", "unet/*"]
    return Path(snapshot_download(model_path, local_files_only=True, allow_patterns=wanted))


def unet_weight_files(model_path: str) -> list[Path]:
    """The UNet weight files `from_pretrained` loads (no variant): diffusion_pytorch_model.safetensors or its shards,
    else the .bin ones. Variants downloaded beside them (fp16, ema) are not what is loaded, so they are not counted."""
    unet = model_folder(model_path) / "unet"
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (unet / name).is_file():
            return [unet / name]
        index = unet / f"{name}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                raise ModelError(f"{index} is damaged ({error}); download the model again.") from None
            if not all(isinstance(shard, str) and Path(shard).name == shard not in ("", ".", "..") for shard in shards):
                raise ModelError(f"{index} names shards outside unet/; download the model again.")
            return [unet / shard for shard in shards]
    raise ModelError(f"{model_path} has no UNet weights under unet/: is the download complete?")


def model_fingerprint(model_path: str, home: Path) -> str:
    """The first 16 hex digits of the SHA-256 of the UNet weights `model_path` loads (of the files' hashes, in order,
    when it is sharded); see `files_fingerprint`."""
    return files_fingerprint(unet_weight_files(model_path), home)


def files_fingerprint(paths: list[Path], home: Path) -> str:
    """The first 16 hex digits of the SHA-256 of one file, or of its files' SHA-256s in order (see `content_hash`)."""
    hashes = [content_hash(path, home) for path in paths]
    if len(hashes) == 1:
        return hashes[0][:16]
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:16]


def content_hash(path: Path, home: Path) -> str:
    """The SHA-256 of the file at `path`: the hub cache's blob name when `path` links to one (the hub names each
    large file's blob by it, so nothing is read), else computed once and cached under home per path, size and
    mtime, so that gigabytes of weights are hashed once."""
    target = path.resolve()
    if target.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", target.name):
        return target.name
    cache_file = home / "cache" / "file-hashes.json"
    try:
        cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    except ValueError:
        cache = {}  # a damaged cache is only a cache: hash again
    key = f"{target}:{target.stat().st_size}:{target.stat().st_mtime_ns}"
    if key not in cache:
        digest = hashlib.sha256()
        with target.open("rb") as weights:
            while chunk := weights.read(1 << 24):
                digest.update(chunk)
        cache[key] = digest.hexdigest()
        atomic_write_text(cache_file, json.dumps(cache, indent=1))
    return cache[key]
