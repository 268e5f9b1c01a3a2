"""The volume readers behind :func:`scsam_monai.data.io.open_volume`, one module per format family.

- :mod:`.volume`: :class:`~.volume.Volume`, the one interface every reader returns;
  :class:`~.volume.DataPreparationError`; the memory check that refuses reads a corrupt header makes huge.
- :mod:`.dims`: maps a source's dimensions onto ``(Z, Y, X)`` and builds a volume's read functions.
- :mod:`.formats`: the file-name suffixes and URL schemes that decide which reader opens a path.
- :mod:`.tiff`, :mod:`.pillow`, :mod:`.hdf5`, :mod:`.n5_zarr`, :mod:`.nifti_itk`: the readers of one format
  family each.
- :mod:`.dispatch`: :func:`~.dispatch.open_volume`, which picks the reader for a file, a folder or glob of
  per-slice files, a list of files, a container or a URL.

Import the public names from :mod:`scsam_monai.data.io`; these modules are its implementation.
"""
