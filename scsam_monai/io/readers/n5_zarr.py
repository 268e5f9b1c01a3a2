"""N5 and Zarr v2/v3 / OME-Zarr arrays through tensorstore, in local folders or at ``s3://``, ``gs://`` or
``https://`` URLs; chunked, so any slice is read without loading the whole volume.

N5 lists dimensions fastest first (x, y, z) and is reversed to ``(z, y, x)``; an N5 multiscale group opens its
``s0`` array, and spacing comes from ``pixelResolution``, ``resolution`` or a ``transform``. An OME-Zarr image
(a group with ``multiscales``) opens its first, full-resolution dataset; its axes name the dimensions and its
coordinate transformations give the spacing. Malformed JSON metadata is a :class:`~.volume.DataPreparationError`
naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from scsam_monai.io.formats import URL_PATTERN
from scsam_monai.io.readers.dims import mapped_reader, plan_dims
from scsam_monai.io.readers.volume import DataPreparationError, Volume, natural_key, require_module

__all__ = ["open_n5", "open_zarr"]


def _join(base: str, key: str) -> str:
    key = key.strip("/")
    return f"{base.rstrip('/')}/{key}" if key else base.rstrip("/")


def _kvstore(location: str) -> Any:
    """tensorstore kvstore spec of a local folder or a URL (trailing slash: a directory)."""
    if URL_PATTERN.match(location):
        return location.rstrip("/") + "/"
    return {"driver": "file", "path": os.path.abspath(location) + "/"}


def _read_json(location: str, name: str) -> dict | None:
    if not URL_PATTERN.match(location):
        path = Path(location) / name
        if not path.is_file():
            return None
        try:
            value = json.loads(path.read_bytes())
        except (ValueError, RecursionError) as err:
            raise DataPreparationError(f"{path}: is not valid JSON ({err}).") from err
        if not isinstance(value, dict):
            raise DataPreparationError(f"{path}: expected a JSON object, got {type(value).__name__}.")
        return value
    ts = require_module("tensorstore", "N5 and Zarr")
    try:
        result = ts.KvStore.open(_kvstore(location)).result().read(name).result()
    except Exception as err:  # noqa: BLE001
        raise DataPreparationError(f"{location}: cannot be reached ({type(err).__name__}: {err}).") from err
    if result.state != "value":
        return None
    try:
        value = json.loads(result.value)
    except (ValueError, RecursionError) as err:
        raise DataPreparationError(f"{location}/{name}: is not valid JSON ({err}).") from err
    if not isinstance(value, dict):
        raise DataPreparationError(f"{location}/{name}: expected a JSON object, got {type(value).__name__}.")
    return value


def _children(location: str, marker: str) -> list[str]:
    if URL_PATTERN.match(location) or not Path(location).is_dir():
        return []
    found = []
    for root, _, files in os.walk(location):
        if marker in files and os.path.abspath(root) != os.path.abspath(location):
            found.append(os.path.relpath(root, location))
    return sorted(found, key=natural_key)[:20]


def _ts_open(driver: str, location: str, source: str) -> Any:
    ts = require_module("tensorstore", "N5 and Zarr")
    try:
        return ts.open({"driver": driver, "kvstore": _kvstore(location)}, read=True).result()
    except Exception as err:  # noqa: BLE001
        raise DataPreparationError(f"{source}: cannot be opened as {driver} ({type(err).__name__}: {err}).") from err


def _n5_spacing(attrs: dict, parent: dict | None, name: str) -> tuple[tuple | None, str | None]:
    try:
        return _n5_spacing_or_fail(attrs, parent, name)
    except Exception:  # noqa: BLE001 - spacing is optional metadata; a malformed attribute must not stop reading
        return None, None


def _n5_spacing_or_fail(attrs: dict, parent: dict | None, name: str) -> tuple[tuple | None, str | None]:
    if isinstance(attrs.get("pixelResolution"), dict):
        res = attrs["pixelResolution"]
        return tuple(reversed([float(v) for v in res.get("dimensions", [])])), res.get("unit")
    if isinstance(attrs.get("resolution"), list):
        return tuple(reversed([float(v) for v in attrs["resolution"]])), attrs.get("unit") or attrs.get("units")
    transform = attrs.get("transform")
    if transform is None and parent:
        for ms in parent.get("multiscales", []) or []:
            for ds in ms.get("datasets", []):
                if ds.get("path") == name:
                    transform = ds.get("transform")
    if isinstance(transform, dict) and "scale" in transform:
        scale = [float(v) for v in transform["scale"]]
        units = transform.get("units") or [None]
        if transform.get("ordering", "C") == "F":
            scale = scale[::-1]
        return tuple(scale), units[0]
    return None, None


def open_n5(location: str, key: str | None) -> Volume:
    """Array ``key`` of the N5 container at ``location`` (a folder or URL; ``s0`` of a multiscale group)."""
    key = (key or "").strip("/")
    array_at = _join(location, key)
    source = f"{location} [{key}]" if key else location
    attrs = _read_json(array_at, "attributes.json")
    if attrs is None:
        raise DataPreparationError(f"{source}: no N5 array or group here (attributes.json is missing).")
    if "dimensions" not in attrs:
        scale0 = _read_json(_join(array_at, "s0"), "attributes.json")
        if scale0 is not None and "dimensions" in scale0:
            key, array_at, attrs = _join(key, "s0").strip("/"), _join(array_at, "s0"), scale0
            source = f"{location} [{key}]"
        else:
            arrays = ", ".join(_children(array_at, "attributes.json")) or "see the container"
            raise DataPreparationError(
                f"{source}: is an N5 group, not an array; name an array with the dataset key ({arrays})."
            )
    parent_key, _, name = key.rpartition("/")
    parent = _read_json(_join(location, parent_key), "attributes.json") if key else None
    spacing, unit = _n5_spacing(attrs, parent, name)
    store = _ts_open("n5", array_at, source).T  # N5 lists dimensions fastest first: reverse to (z, y, x)
    plan, shape3 = plan_dims(store.shape, source)
    get = lambda i: store[i].read().result()  # noqa: E731
    return Volume(
        source=source,
        format="n5",
        shape=shape3,
        dtype=store.dtype.numpy_dtype,
        read=mapped_reader(get, plan),
        spacing=spacing,
        unit=unit,
    )


def _zarr_node(location: str) -> tuple[str | None, int, dict]:
    """(``"array"`` | ``"group"`` | None, zarr format, attributes) of the node at ``location``."""
    meta = _read_json(location, "zarr.json")
    if meta is not None:
        return meta.get("node_type"), 3, meta.get("attributes", {}) or {}
    attrs = _read_json(location, ".zattrs") or {}
    if _read_json(location, ".zarray") is not None:
        return "array", 2, attrs
    if _read_json(location, ".zgroup") is not None or attrs:
        return "group", 2, attrs
    return None, 2, {}


def _multiscales(attrs: dict) -> list:
    return (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales") or []


def _ome_scale(ms: dict, ds: dict) -> tuple[list[str] | None, list[float] | None, list[str | None]]:
    axes = ms.get("axes")
    names = [a["name"] if isinstance(a, dict) else str(a) for a in axes] if axes else None
    units = [a.get("unit") if isinstance(a, dict) else None for a in axes] if axes else []
    scale = None
    for transforms in (ds.get("coordinateTransformations"), ms.get("coordinateTransformations")):
        for t in transforms or []:
            if t.get("type") == "scale" and "scale" in t:
                values = [float(v) for v in t["scale"]]
                scale = values if scale is None else [a * b for a, b in zip(scale, values, strict=True)]
    return names, scale, units


def open_zarr(location: str, key: str | None) -> Volume:
    """Array ``key`` of the Zarr container at ``location`` (an OME-Zarr image: its full-resolution dataset)."""
    key = (key or "").strip("/")
    node_at = _join(location, key)
    source = f"{location} [{key}]" if key else location
    kind, version, attrs = _zarr_node(node_at)
    names = scale = None
    units: list = []
    if kind == "group":
        multiscales = _multiscales(attrs)
        if not multiscales or not multiscales[0].get("datasets"):
            arrays = ", ".join(_children(node_at, ".zarray") + _children(node_at, "zarr.json")) or "see the container"
            raise DataPreparationError(
                f"{source}: is a Zarr group without OME-Zarr multiscales; name an array with the dataset key "
                f"({arrays})."
            )
        ms, ds = multiscales[0], multiscales[0]["datasets"][0]
        names, scale, units = _ome_scale(ms, ds)
        key = _join(key, ds["path"]).strip("/")
        node_at, source = _join(location, key), f"{location} [{key}]"
        kind, version, _ = _zarr_node(node_at)
    elif kind == "array" and key:
        parent_key, _, name = key.rpartition("/")
        _, _, parent_attrs = _zarr_node(_join(location, parent_key))
        for ms in _multiscales(parent_attrs)[:1]:
            for ds in ms.get("datasets", []):
                if ds.get("path") == name:
                    names, scale, units = _ome_scale(ms, ds)
    if kind != "array":
        raise DataPreparationError(f"{source}: no Zarr array or group here (no .zarray, .zgroup or zarr.json).")
    store = _ts_open("zarr3" if version == 3 else "zarr", node_at, source)
    if names is not None and len(names) != store.ndim:
        names = scale = None
    plan, shape3 = plan_dims(store.shape, source, names)
    spacing = unit = None
    if scale is not None:
        kept = [i for i, p in enumerate(plan) if isinstance(p, str)]
        spacing = tuple(scale[i] for i in kept)
        spacing = (None,) + spacing if len(spacing) == 2 else spacing
        unit = next((units[i] for i in kept if i < len(units) and units[i]), None)
    get = lambda i: store[i].read().result()  # noqa: E731
    return Volume(
        source=source,
        format="zarr",
        shape=shape3,
        dtype=store.dtype.numpy_dtype,
        read=mapped_reader(get, plan),
        spacing=spacing,
        unit=unit,
    )
