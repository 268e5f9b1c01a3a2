"""Writers of label and probability maps, slice by slice, in the formats the readers read: the other half of
:mod:`scsam_monai.io.readers`, with the same format table (:mod:`scsam_monai.io.formats`).

:func:`open_writer` returns a :class:`SliceWriter` for a ``(Z, Y, X)`` array in one of
:data:`~scsam_monai.io.formats.OUTPUT_FORMATS`; ``write(index, plane)`` takes the slices in order and
``close()`` finishes the file, so that neither a volume nor its segmentation is ever held whole. Every writer
writes under a hidden partial name beside its output and renames it into place when ``close()`` completes it;
``abort()`` (or a ``close()`` with slices missing) removes the partial output, so a failed run never leaves a
truncated file under the final name:

- TIFF stacks through tifffile's incremental writer (ImageJ hyperstack with the input's spacing),
- HDF5 datasets (h5py, chunked one slice per chunk, ``element_size_um``),
- Zarr (OME-Zarr ``multiscales`` scale) and N5 (``pixelResolution``) arrays through tensorstore,
- PNG, one file per slice (or one file for a 2D image),
- NIfTI: the slices go to a memory-mapped array on disk which nibabel then writes out, so memory stays bounded
  there too (disk holds one copy).

:func:`output_format_for` chooses the format of an input's label map (the input's own, unless one is asked
for). Modules, one per format family: :mod:`.tiff`, :mod:`.png`, :mod:`.hdf5`, :mod:`.n5_zarr`,
:mod:`.nifti`; :mod:`.base` holds the :class:`SliceWriter` interface and :mod:`.dispatch` the choice.
"""

from __future__ import annotations

from scsam_monai.io.writers.base import SliceWriter
from scsam_monai.io.writers.dispatch import open_writer, output_format_for

__all__ = ["SliceWriter", "open_writer", "output_format_for"]
