"""MONAI Label app for the ScSAM bundle: ``monailabel start_server --app apps/scsam --studies DIR``.

MONAI Label's stock ``monaibundle`` app serves the packaged Model Zoo bundle for inference; this app builds on
the same task classes (``BundleInferTask``, ``BundleTrainTask``) and adds what annotation rounds need: checked
uploads, slice-wise 2D/3D inference in batches, and training of the head on the datastore's labels with the
bundle's own training (docs/monai_label.md says which app to use when). All logic lives in the package,
``scsam_monai.label``; MONAI Label finds the app class by its base, ``MONAILabelApp``.
"""

from scsam_monai.label.app import ScSAMLabelApp

__all__ = ["ScSAMLabelApp"]
