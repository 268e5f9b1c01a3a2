"""Safe loading of checkpoints: the frozen encoders', SAM's decoder weights and the trained head's.

Every checkpoint is read with ``torch.load(path, map_location="cpu", weights_only=True)``: tensors and plain
containers only, never pickled code. Wrappers (``{"model_state": ...}``, ``{"state_dict": ...}``,
``{"model": ...}``) and key prefixes (``sam.``, ``module.``, ``encoder.``) are removed so that callers get the
flat state dict of the module they build.

The MAE encoder file that the bundle's pre-training exports (``scsam_monai.mae``) is
``{"mae_architecture": {...}, "state_dict": {...}}``: the timm ViT state dict and a record of the architecture
it was pre-trained with (arch name, field of view, patch, width, depth, heads, intensity normalisation, epoch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from scsam_monai.hashing import sha256_file

__all__ = [
    "MAE_ARCHITECTURE_KEY",
    "SamCheckpoint",
    "sha256_file",
    "load_sam_state_dict",
    "load_mae_state_dict",
    "load_mae_checkpoint",
    "submodule_state",
    "load_sam_decoder_weights",
    "load_head_weights",
]

#: Key of the architecture record in an exported MAE encoder file.
MAE_ARCHITECTURE_KEY = "mae_architecture"

_HINT_OFFICIAL = (
    "Official SAM checkpoints (sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth, sam_vit_h_4b8939.pth) are listed with "
    "their URLs and hashes in bundle/large_files.yml; download them into bundle/models/."
)
_HINT_MAE = (
    "The MAE checkpoint is produced by the bundle's MAE pre-training: python -m monai.bundle run pretraining "
    "--config_file bundle/configs/pretrain_mae.yaml (it writes bundle/models/mae_encoder.pth; see docs/mae.md)."
)
_HINT_REWRITE = (
    "If the file is a trusted checkpoint that also pickles other objects, re-save only its tensors, e.g. "
    "torch.save(torch.load(path, weights_only=False)['model_state'], 'clean.pth')."
)
# wrapper keys searched (in this order) for the state dict
_WRAPPER_KEYS = ("model_state", "state_dict", "model", "sam", "encoder", "module")


def _safe_load(path: str | Path, hint: str) -> object:
    """``torch.load`` with ``weights_only=True``; clear errors for missing, corrupt or unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: '{path}'. {hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError (refused object), RuntimeError/EOFError (corrupt), ...
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"cannot read checkpoint '{path}' safely with torch.load(weights_only=True): "
            f"{type(e).__name__}: {first_line}. The file is corrupt, truncated, not a PyTorch checkpoint, or "
            f"pickles objects other than tensors. {_HINT_REWRITE}"
        ) from e


def _candidate_dicts(obj: object, depth: int = 3):
    """Yield ``obj`` and the mappings nested under wrapper keys (known wrapper keys first)."""
    if not isinstance(obj, Mapping):
        return
    yield obj
    if depth == 0:
        return
    keys = [k for k in _WRAPPER_KEYS if k in obj] + [k for k in obj if k not in _WRAPPER_KEYS]
    for k in keys:
        if isinstance(obj[k], Mapping):
            yield from _candidate_dicts(obj[k], depth - 1)


def _extract(obj: object, anchor: str, path: str | Path) -> dict[str, torch.Tensor] | None:
    """Find the state dict holding keys that contain ``anchor`` and strip the prefix in front of it.

    Returns None if no mapping holds such keys. Raises ValueError if one mapping holds them under several
    different prefixes (ambiguous).
    """
    for cand in _candidate_dicts(obj):
        prefixes: dict[str, int] = {}
        for k, v in cand.items():
            if isinstance(k, str) and isinstance(v, torch.Tensor) and anchor in k:
                prefix = k[: k.index(anchor)]
                prefixes[prefix] = prefixes.get(prefix, 0) + 1
        if not prefixes:
            continue
        if len(prefixes) > 1:
            raise ValueError(
                f"checkpoint '{path}' holds '{anchor}*' weights under several prefixes {sorted(prefixes)}; "
                "cannot tell which model to load."
            )
        (prefix,) = prefixes
        return {
            k[len(prefix) :]: v
            for k, v in cand.items()
            if isinstance(k, str) and k.startswith(prefix) and isinstance(v, torch.Tensor)
        }
    return None


def load_sam_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the flat SAM state dict from an official or a SAM-compatible checkpoint.

    Accepts the official files (flat ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``) and
    SAM-compatible EM checkpoints such as micro-sam's, which may wrap the state dict (``model_state``,
    ``state_dict``, ``model``) and prefix its keys (``sam.``, ``module.``). The file is read with
    ``torch.load(weights_only=True)``.

    Args:
        path: checkpoint file.

    Returns:
        The SAM state dict with keys ``image_encoder.*`` (and ``prompt_encoder.*``, ``mask_decoder.*`` when the
        file has them), tensors on the CPU.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be read safely or holds no ``image_encoder.*`` weights.
    """
    obj = _safe_load(path, _HINT_OFFICIAL)
    state = _extract(obj, "image_encoder.", path)
    if state is None or not any(k.startswith("image_encoder.") for k in state):
        top = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(
            f"checkpoint '{path}' holds no SAM image encoder weights (no 'image_encoder.*' keys; top-level "
            f"entries: {top}). Expected an official SAM checkpoint or a SAM-compatible one. {_HINT_OFFICIAL}"
        )
    return state


@dataclass(frozen=True)
class SamCheckpoint:
    """A SAM checkpoint read once: its path (named in messages and cache keys) and its flat state dict.

    The model builder reads the file once and hands this to the image encoder and to the head's decoder parts, as
    segment-anything's ``build_sam`` reads its checkpoint once for the whole ``Sam``.
    """

    path: str
    state: Mapping[str, torch.Tensor]

    @classmethod
    def of(cls, checkpoint: str | Path | SamCheckpoint) -> SamCheckpoint:
        """``checkpoint`` itself, or the file it names read with :func:`load_sam_state_dict`."""
        if isinstance(checkpoint, SamCheckpoint):
            return checkpoint
        return cls(str(checkpoint), load_sam_state_dict(checkpoint))


def load_mae_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read the MAE ViT encoder's state dict (timm ``VisionTransformer`` keys) and its architecture record.

    Accepts the encoder file exported by the MAE pre-training (``{"mae_architecture": ..., "state_dict": ...}``),
    the pre-training's full checkpoint (``{"network": {"encoder.*", "decoder_*", ...}, "optimizer": ...}``), a
    plain state dict or one under ``state_dict``/``model``, keys possibly prefixed ``encoder.`` or ``module.``.
    MAE decoder weights (``decoder_*``, ``mask_token``) are dropped. The file is read with
    ``torch.load(weights_only=True)``.

    Args:
        path: checkpoint file.

    Returns:
        The encoder state dict (``cls_token``, ``pos_embed``, ``patch_embed.*``, ``blocks.*``, ``norm.*``) and the
        architecture record (an empty dict when the file holds none).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be read safely or holds no ViT encoder weights.
    """
    obj = _safe_load(path, _HINT_MAE)
    state = _extract(obj, "patch_embed.proj.weight", path)
    if state is not None:
        state = {k: v for k, v in state.items() if not (k.startswith("decoder") or k == "mask_token")}
    if not state or "patch_embed.proj.weight" not in state:
        raise ValueError(
            f"checkpoint '{path}' holds no ViT encoder weights (no 'patch_embed.proj.weight'). {_HINT_MAE}"
        )
    record = obj.get(MAE_ARCHITECTURE_KEY) if isinstance(obj, Mapping) else None
    return state, dict(record) if isinstance(record, Mapping) else {}


def load_mae_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the state dict of the MAE ViT encoder (timm ``VisionTransformer`` keys).

    The state dict of :func:`load_mae_checkpoint`, without the architecture record.

    Args:
        path: checkpoint file.

    Returns:
        The encoder state dict (``cls_token``, ``pos_embed``, ``patch_embed.*``, ``blocks.*``, ``norm.*``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be read safely or holds no ViT encoder weights.
    """
    return load_mae_checkpoint(path)[0]


def submodule_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries of ``state`` under ``prefix.``, with the prefix removed.

    Args:
        state: a flat state dict, e.g. from :func:`load_sam_state_dict`.
        prefix: submodule name, e.g. ``"mask_decoder"`` or ``"prompt_encoder"`` (a trailing dot is optional).

    Returns:
        The submodule's state dict (empty if ``state`` has no such entries).
    """
    p = prefix if prefix.endswith(".") else prefix + "."
    return {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}


def load_sam_decoder_weights(
    checkpoint: str | Path | SamCheckpoint, *, mask_decoder: nn.Module, prompt_encoder: nn.Module
) -> None:
    """Initialise SAM's mask decoder and prompt encoder (built by the caller) from a SAM checkpoint.

    Args:
        checkpoint: an official or SAM-compatible checkpoint file (read by :func:`load_sam_state_dict`), or a
            :class:`SamCheckpoint` read already.
        mask_decoder: receives the file's ``mask_decoder.*`` weights, strictly.
        prompt_encoder: receives the file's ``prompt_encoder.*`` weights, strictly.

    Raises:
        ValueError: the file cannot be read safely, or its weights do not fit the modules.
    """
    read = SamCheckpoint.of(checkpoint)
    for prefix, module in (("mask_decoder", mask_decoder), ("prompt_encoder", prompt_encoder)):
        try:
            module.load_state_dict(submodule_state(read.state, prefix), strict=True)
        except RuntimeError as err:
            raise ValueError(f"{read.path}: its {prefix} weights do not fit this head: {err}") from err


def load_head_weights(head: nn.Module, path: str | Path) -> None:
    """Load a trained head's state from ``path`` with ``torch.load(weights_only=True)``, strictly.

    Accepts a plain state dict (what MONAI's ``CheckpointSaver`` writes for one object) or a dict holding it
    under ``network``, ``model`` or ``state_dict``.

    Raises:
        FileNotFoundError: when the file is missing.
        ValueError: when it is unreadable or its weights do not fit the head.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: trained head checkpoint not found (train the bundle first).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling errors of many kinds become one message
        raise ValueError(f"{path}: cannot be read as a weights-only checkpoint ({err}).") from err
    for key in ("network", "model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit this head configuration: {err}") from err
