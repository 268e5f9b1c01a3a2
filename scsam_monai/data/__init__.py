"""Data of scsam-monai: reading and writing EM files, preparing EM volumes, synthetic EM, the embedding cache.

Subpackages and modules, each the one home of its names:

- :mod:`.formats`: the table of file formats (suffixes, container markers) that readers and writers share;
- :mod:`.readers`: :func:`~.readers.open_volume` and :func:`~.readers.read_image_2d` over every format EM data
  come in, and :class:`~.readers.DataPreparationError`;
- :mod:`.writers`: label and probability maps written slice by slice in those formats;
- :mod:`.normalize`: intensity windows and :func:`~.normalize.normalize_slice`;
- :mod:`.palette`: the class colours of every overlay;
- :mod:`.preparation`: ``scsam-prepare`` (:func:`~.preparation.prepare_dataset`); :mod:`.betaseg`: the
  BetaSeg download; :mod:`.synthetic`: the embedded synthetic data set;
- :mod:`.transforms`, :mod:`.embedding_cache`, :mod:`.embedding_dataset`: the MONAI pipeline of the cached
  encoder embeddings.

The package itself exports nothing: import each name from its module (one path per name), so that command-line
tools that only read and write files (``scsam-prepare``, ``scsam-synthetic``) start without torch and MONAI.
"""
