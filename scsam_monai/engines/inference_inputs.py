"""Helper of the inference workflow: which images to segment (a folder, one image, or a datalist split)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["image_list"]


def image_list(
    input_dir: str | Path | None,
    pattern: str = "*.tif",
    *,
    datalist: str | Path | None = None,
    split: str | None = None,
) -> list[dict[str, str]]:
    """Items ``{"image": path}`` to segment (labels of a datalist split are not read: inference sees images only).

    Args:
        input_dir: folder of images, or a single image file; used when no datalist split is named.
        pattern: glob of image files inside ``input_dir``.
        datalist: MONAI datalist JSON; with ``split`` its split is segmented instead of ``input_dir``.
        split: datalist key, e.g. ``test``.

    Raises:
        FileNotFoundError / ValueError: with the path, when nothing can be found.
    """
    if datalist is not None and split:
        from monai.data import load_decathlon_datalist

        path = Path(datalist)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: datalist not found.")
        if split not in json.loads(path.read_text()):
            raise ValueError(f"{path}: the datalist has no split {split!r}.")
        items = [{"image": item["image"]} for item in load_decathlon_datalist(str(path), True, split)]
    else:
        if input_dir is None:
            raise ValueError("Name an input folder or image (input_dir) or a datalist split (infer_split).")
        root = Path(input_dir)
        if root.is_file():
            items = [{"image": str(root)}]
        elif root.is_dir():
            items = [{"image": str(p)} for p in sorted(root.glob(pattern)) if p.is_file()]
        else:
            raise FileNotFoundError(f"{root}: input folder or image not found.")
    if not items:
        raise ValueError(f"No image to segment in {input_dir} matching {pattern!r}.")
    return items
