"""MONAI Label app for the ScSAM bundle: ``monailabel start_server --app apps/scsam --studies DIR``.

A small app of our own rather than MONAI Label's stock ``monaibundle`` sample app: the stock app's
``BundleInferTask`` expects a stand-alone ``inference.yaml`` with transform chains and whole-network weights, and
its ``BundleTrainTask`` feeds a datalist into ``train#dataset#data``; our bundle trains the head on cached
encoder embeddings, keeps only the head's weights and segments 2D/3D EM slice by slice (see apps/scsam/README.md).
All logic lives in the package, ``scsam_monai.label``; MONAI Label finds the app class by its base,
``MONAILabelApp``.
"""

from scsam_monai.label.app import ScSAMLabelApp

__all__ = ["ScSAMLabelApp"]
