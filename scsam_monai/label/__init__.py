"""MONAI Label integration: the ScSAM bundle behind MONAI Label's REST API (3D Slicer, web clients).

Modules (only :mod:`.uploads`, :mod:`.bundle` and :mod:`.warmup` work without MONAI Label installed; the others
need the ``label`` extra, ``pip install -e .[label]``):

- :mod:`.uploads`: checks of uploaded images and label maps, refused with HTTP 415/422;
- :mod:`.bundle`: the bundle's configs, overlays and overrides from the app's ``--conf``;
- :mod:`.infer`: the inference task, a MONAI Label ``BundleInferTask`` (checked inputs, slice-wise ScSAM in
  batches, the served head, label maps in the input's ITK geometry);
- :mod:`.train`: the training task, a MONAI Label ``BundleTrainTask`` (the bundle's training on the datastore's
  labels, warm start from the served head, which the run's best head replaces);
- :mod:`.warmup`: the network's warm-up when the server starts (compiles the SAM encoder on a CPU), reported
  in ``/info`` and in the answer of a request that waited for it;
- :mod:`.datastore`: a local datastore that checks uploads;
- :mod:`.app`: the MONAI Label app, imported by ``apps/scsam/main.py``.

See ``docs/monai_label.md``.
"""
