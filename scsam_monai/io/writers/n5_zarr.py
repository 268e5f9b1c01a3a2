"""N5 and Zarr (OME-Zarr) arrays through tensorstore, one slice per chunk, with the input's spacing."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from scsam_monai.io.writers.base import SliceWriter, spacing_zyx

__all__ = ["TensorstoreWriter"]


class TensorstoreWriter(SliceWriter):
    """A new N5 container (``pixelResolution`` and ``resolution``) or an OME-Zarr image (array ``0`` with a
    ``multiscales`` scale), built in a partial folder; an existing container at the path is replaced on
    ``close()``. Other arguments as :class:`~.base.SliceWriter`.

    Args:
        driver: ``"n5"`` or ``"zarr"``.
    """

    def __init__(self, *args: Any, driver: str) -> None:
        import tensorstore as ts

        super().__init__(*args)
        z, y, x = spacing_zyx(self.volume)
        unit = self.volume.unit or "pixel"
        if driver == "n5":
            # N5 lists dimensions fastest first (x, y, z); tensorstore presents them in that order
            spec = {
                "driver": "n5",
                "kvstore": {"driver": "file", "path": str(self.partial)},
                "metadata": {
                    "dimensions": list(self.shape[::-1]),
                    "blockSize": [self.shape[2], self.shape[1], 1],
                    "dataType": self.dtype.name,
                    "compression": {"type": "gzip"},
                },
                "create": True,
            }
            self._reverse = True
        else:
            spec = {
                "driver": "zarr",
                "kvstore": {"driver": "file", "path": str(self.partial / "0")},
                "metadata": {"shape": list(self.shape), "chunks": [1, *self.shape[1:]], "dtype": self.dtype.str},
                "create": True,
            }
            self._reverse = False
        self._array = ts.open(spec).result()
        if driver == "n5":
            attrs_path = self.partial / "attributes.json"
            attrs = json.loads(attrs_path.read_text())
            attrs.update({"pixelResolution": {"dimensions": [x, y, z], "unit": unit}, "resolution": [x, y, z]})
            attrs_path.write_text(json.dumps(attrs))
        else:
            (self.partial / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
            axes = [{"name": n, "type": "space", **({"unit": unit} if unit != "pixel" else {})} for n in "zyx"]
            multiscales = [
                {
                    "version": "0.4",
                    "axes": axes,
                    "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [z, y, x]}]}],
                }
            ]
            (self.partial / ".zattrs").write_text(json.dumps({"multiscales": multiscales}))

    def _write(self, index: int, plane: np.ndarray) -> None:
        plane = plane.astype(self.dtype, copy=False)
        if self._reverse:
            self._array[:, :, index].write(plane.T).result()
        else:
            self._array[index].write(plane).result()

    def _finish(self) -> None:
        """Nothing to finish: every slice's write was awaited, and the metadata was written when opening."""

    def _discard(self) -> None:
        """Nothing held open: every write was awaited; the partial container is removed."""
