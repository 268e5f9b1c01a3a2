"""Readers of 2D images and 3D stacks: one :class:`Volume` interface over the formats EM data come in.

Every source opens (:func:`open_volume`) as a volume of shape ``(Z, Y, X)``; a 2D image is a stack of one slice.
Formats:

- TIFF / OME-TIFF / ImageJ TIFF (tifffile): a multi-page stack is read one page per slice; uncompressed
  contiguous files are memory-mapped, so slices along any axis are read lazily.
- PNG, JPEG, BMP (Pillow): 1-bit images read as ``bool``, palette images as their indices.
- a folder of per-slice files, or a glob (``raw/*.tif``): sorted naturally (``2.png`` before ``10.png``);
  each slice is read from its own file when it is needed.
- HDF5 (h5py, with a dataset key), N5 and Zarr v2/v3 / OME-Zarr (tensorstore, also from ``s3://``, ``gs://``
  or ``https://`` URLs): chunked, so any slice is read without loading the whole volume.
- NIfTI, MHA/MHD, NRRD (MONAI's ``NibabelReader`` and ``ITKReader``, the readers of ``LoadImage``): read whole.

Orientation: ``(Z, Y, X)`` with X the fastest-varying axis, the order in which TIFF, PNG, HDF5 and Zarr store
data. N5 lists its dimensions fastest first (x, y, z) and is reversed; MONAI returns NIfTI/MHA/NRRD as
(x, y, z) and is transposed, so a 2D image is ``(H, W)`` as the file shows it. Voxel spacing is kept in the
same ``(z, y, x)`` order where the format has it (OME and ImageJ TIFF, HDF5 ``element_size_um``, N5
``pixelResolution`` / ``resolution`` / ``transform``, OME-Zarr scales, NIfTI/ITK headers); a component the
file does not give is ``None``.

Every failure raises :class:`DataPreparationError` with a message that names the file and the problem: a missing,
truncated or corrupt file, malformed metadata, a shape that is not one single-channel 2D image or 3D stack, or a
read that would need more memory than the machine has (a corrupt or hostile header declaring a huge image). No
other exception leaves :func:`open_volume` or a :class:`Volume`'s reads (``tests/test_fuzz.py`` checks this with
random bytes and random arrays).

Modules, one per format family: :mod:`.tiff`, :mod:`.pillow`, :mod:`.hdf5`, :mod:`.n5_zarr`, :mod:`.nifti_itk`;
:mod:`.volume` holds the :class:`Volume` interface, the error and the checks of what is read; :mod:`.dims` maps a
source's dimensions onto ``(Z, Y, X)``; :mod:`.dispatch` picks the reader (:func:`open_volume`) and reads one 2D
image of a datalist (:func:`read_image_2d`). Which suffix is which format is the table in
:mod:`scsam_monai.io.formats`, shared with the writers (:mod:`scsam_monai.io.writers`). Import the names
below from this package.
"""

from __future__ import annotations

from scsam_monai.io.readers.dispatch import open_volume, read_image, read_image_2d
from scsam_monai.io.readers.volume import DataPreparationError, Volume, check_memory, check_pixels, natural_key

__all__ = [
    "DataPreparationError",
    "Volume",
    "open_volume",
    "read_image",
    "read_image_2d",
    "check_pixels",
    "check_memory",
    "natural_key",
]
