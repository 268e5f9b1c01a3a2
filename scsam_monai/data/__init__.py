"""Data that reaches the model: transforms, intensity normalisation, the model's preprocessing, the embedding cache.

- :mod:`.transforms`: the one image loader (:class:`~.transforms.LoadEMImaged`) and the transforms of the cached
  embedding pipeline;
- :mod:`.normalize`: intensity windows and :func:`~.normalize.normalize_slice`, the one place intensities are
  scaled;
- :mod:`.preprocessing`: :class:`~.preprocessing.ImagePreprocessing`, how a model's input images are normalised,
  saved with its weights;
- :mod:`.embedding_cache`, :mod:`.embedding_dataset`: the frozen encoders' embeddings, computed once and served
  as a MONAI dataset.

Files are read and written by :mod:`scsam_monai.io`; ``scsam-prepare`` is :mod:`scsam_monai.preparation`; the
synthetic demo data are :mod:`scsam_monai.synthetic`. The package exports nothing itself: import each name from
its module (one path per name).
"""
