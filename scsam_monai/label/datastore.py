"""A MONAI Label local datastore that accepts EM files and refuses unusable uploads with a 4xx answer.

MONAI Label's ``LocalDatastore`` copies whatever it is sent: a corrupt TIFF or a label map with wrong values
would then sit among the studies and only fail later, inside a training run. :class:`CheckedLocalDatastore`
checks every image added (``PUT /datastore/image``) and every label saved (``PUT /datastore/label``) with
:mod:`scsam_monai.label.uploads` first, and answers 415/422 naming the problem; nothing is stored then.
"""

from __future__ import annotations

import logging
from typing import Any

from monailabel.datastore.local import LocalDatastore

from scsam_monai.label.infer import http_error
from scsam_monai.label.uploads import ACCEPTED_SUFFIXES, UploadRejected, check_image, check_label

__all__ = ["CheckedLocalDatastore"]

logger = logging.getLogger(__name__)


class CheckedLocalDatastore(LocalDatastore):
    """``LocalDatastore`` over TIFF, PNG, NIfTI, NRRD and MHA files that checks uploads before storing them.

    Args:
        datastore_path: the studies folder.
        num_classes: number of foreground classes; saved label maps must hold values ``0..num_classes``.
        kwargs: passed to ``LocalDatastore`` (``extensions`` defaults to the accepted suffixes).
    """

    def __init__(self, datastore_path: str, *, num_classes: int, **kwargs: Any) -> None:
        self.num_classes = num_classes
        kwargs.setdefault("extensions", [f"*{s}" for s in ACCEPTED_SUFFIXES])
        super().__init__(datastore_path, **kwargs)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        name = f"{image_id} (uploaded image)" if image_id else "uploaded image"
        try:
            check_image(image_filename, name=name)
        except UploadRejected as err:
            logger.warning(f"Rejected image upload {image_id!r}: {err.message}")
            raise http_error(err) from err
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        image_path = self.get_image_uri(image_id)
        if not image_path:
            from fastapi import HTTPException

            raise HTTPException(status_code=404, detail=f"Image {image_id} not found in the datastore.")
        name = f"label of {image_id}"
        try:
            image_shape = check_image(image_path, name=image_id)
            check_label(label_filename, num_classes=self.num_classes, image_shape=image_shape, name=name)
        except UploadRejected as err:
            logger.warning(f"Rejected label upload for {image_id!r}: {err.message}")
            raise http_error(err) from err
        return super().save_label(image_id, label_filename, label_tag, label_info)
