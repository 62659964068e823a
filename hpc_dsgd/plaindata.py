"""The plain-data codec of checkpoints: a tree of dicts (str keys), lists, str, int, float, bool, None and
torch tensors, as a JSON document plus named tensors. Loading one never runs code: the JSON is data, the
tensors are read with torch.load(weights_only=True) (checkpoint.py).

to_plain(obj, blobs) moves every tensor into `blobs` under "b.<i>" and leaves {"$tensor": "b.<i>"} in its
place; from_plain(doc, blobs) puts them back. DTYPES are the tensor types a checkpoint stores.
"""
from __future__ import annotations

import torch

PLAIN = "dicts with str keys, lists, str, int, float, bool, None and torch tensors"
DTYPES = {str(d).replace("torch.", ""): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64,
                                                   torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                                                   torch.bool)}


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def cpu_compact(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor owning exactly its elements (torch.save of a view would save the whole storage)."""
    t = t.detach().to("cpu")
    if not t.is_contiguous() or t.storage_offset() != 0 or t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.contiguous().clone()
    return t


def to_plain(obj, blobs: dict[str, torch.Tensor], where: str = "state"):
    """obj as a JSON-able tree; each tensor moves into blobs under "b.<i>" and is replaced by
    {"$tensor": "b.<i>"}. Tuples become lists. Anything else is a TypeError naming where it was."""
    if isinstance(obj, torch.Tensor):
        if dtype_name(obj) not in DTYPES:
            raise TypeError(f"{where}: tensor dtype {obj.dtype} is not one a checkpoint stores")
        key = f"b.{len(blobs)}"
        blobs[key] = cpu_compact(obj)
        return {"$tensor": key}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str) or k.startswith("$"):
                raise TypeError(f"{where}: key {k!r} is not a plain str key (nor may it start with '$')")
            out[k] = to_plain(v, blobs, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, blobs, f"{where}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    raise TypeError(f"{where}: {type(obj).__name__} is not plain data ({PLAIN})")


def from_plain(obj, blobs: dict[str, torch.Tensor], where: str = "state"):
    """Inverse of to_plain; a reference to a tensor that is not there is a ValueError naming where."""
    if isinstance(obj, dict):
        if set(obj) == {"$tensor"}:
            key = obj["$tensor"]
            if not isinstance(key, str) or not key.startswith("b.") or key not in blobs:
                raise ValueError(f"{where} refers to tensor {key!r}, which the file does not hold")
            return blobs[key]
        return {k: from_plain(v, blobs, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_plain(v, blobs, f"{where}[{i}]") for i, v in enumerate(obj)]
    return obj
