"""Baselines and training options that bundle overlays (``bundle/configs/variants``) name.

- :mod:`.supervised`: MONAI networks trained on the images (UNet, AttentionUnet, SwinUNETR, DynUNet planned the
  nnU-Net way by :mod:`.planning`);
- :mod:`.surgicalsam`: the SurgicalSAM head on cached SAM embeddings;
- :mod:`.zero_shot`: SAM's automatic mask generator, its masks classed by the paper's rule;
- :mod:`.stopping`: early stopping on the validation mean Dice and the record of how a run ended;
- :mod:`.evaluation`: scoring any of them the same way on a datalist split.

The package exports nothing itself: import each name from its module.
"""
