"""``scsam-prepare`` behind :func:`scsam_monai.data.prepare.prepare_dataset`, in parts.

- :mod:`.sources`: what to prepare: :class:`~.sources.CellSource` and :class:`~.sources.MaskSource`, and the
  YAML/JSON cell spec and ``--label-values`` text that describe them.
- :mod:`.splits`: :class:`~.splits.SplitSpec` and how every selected slice is given to exactly one split.
- :mod:`.labels`: how a mask's values become foreground (:func:`~.labels.mask_rule`) and label-map values classes.
- :mod:`.geometry`: in-plane crop and downscaling of image and label slices.
- :mod:`.cells`: a cell opened for preparation, the checks before anything is written, the measuring pass and
  the label slice of every index.
- :mod:`.outputs`: writing slices, the datalist and the manifest's records; staging and the final swap.
- :mod:`.dataset`: :func:`~.dataset.prepare_dataset`, which runs the steps in order.

Import the public names from :mod:`scsam_monai.data.prepare`; these modules are its implementation.
"""
