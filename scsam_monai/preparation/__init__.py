"""Turn labelled EM volumes ("cells") into 2D training slices, a MONAI datalist and a manifest.

:func:`prepare_dataset` (the ``scsam-prepare`` command) reads each cell's image volume and either its binary
organelle masks or one integer label map, and writes:

- ``images/<cell>_<axis><index>.tif``: the slice, normalised per volume (robust percentiles, see
  :mod:`scsam_monai.data.normalize`) to uint8 0..255 (or float32 0..1);
- ``labels/<cell>_<axis><index>.tif``: the label map, 0 background and 1..C the classes in the given order;
- ``datalist.json``: MONAI's datalist layout (``training``, ``validation``, ``test``; paths relative to the
  folder), as ``monai.data.load_decathlon_datalist`` reads it; with k-fold splits also ``folds/fold_<k>.json``;
- ``manifest.json``: sources with checksums, the class mapping and the rule that turned every mask into
  foreground, the slice indices of every split, intensity windows and per-class pixel counts.

Masks. A mask's foreground is decided by a rule, recorded in the manifest: a given threshold (foreground =
value >= threshold), ``nonzero``, or by default ``auto``: a mask with exactly two distinct values takes the
larger as foreground (0/1, 0/255 and 1-bit masks); otherwise foreground = value >= half the dtype's maximum
(>= 128 for 8-bit soft-edged masks, 32768 for 16 bit, 0.5 for float). Where masks overlap, ``overlap="first"``
gives the pixel to the class listed first (``"last"``: listed last; ``"error"``: stop).

Label maps. Values 0..C are the classes by default; ``label_values`` maps arbitrary values (several per
class, and ``background``) to classes. A value outside the mapping stops the preparation unless
``unmapped="background"``.

Splits never share a slice. By cell: the paper's default (the last cell trains, the others validate),
explicit cell lists, or k-fold by cell. By slice ranges (explicit, for a single volume): every slice index
belongs to at most one split.

Every problem found in the inputs (shapes that differ, a missing file, label values outside the class list, an
empty or constant volume, NaN or infinite intensities, a wrong dataset key, an unreadable file) raises
:class:`DataPreparationError` naming the file, before anything is written; the output is assembled in a staging
folder and moved into place at the end, so a failure never leaves a partial data set.

The steps, one module each: the cells and their spec (:mod:`.sources`), the splits (:mod:`.splits`), mask rules
and label maps (:mod:`.labels`), in-plane crop and downscaling (:mod:`.geometry`), opening, checking and measuring
cells (:mod:`.cells`), the written outputs, staging and the final swap (:mod:`.outputs`) and
:func:`prepare_dataset` itself (:mod:`.dataset`). Import the names below from this package;
:class:`~scsam_monai.io.readers.DataPreparationError` comes from :mod:`scsam_monai.io.readers`.
"""

from __future__ import annotations

from scsam_monai.preparation.dataset import prepare_dataset
from scsam_monai.preparation.labels import MaskRule, mask_rule
from scsam_monai.preparation.sources import CellSource, MaskSource, load_cells_spec, parse_label_values
from scsam_monai.preparation.splits import SPLITS, SplitSpec, parse_ranges

__all__ = [
    "MaskSource",
    "CellSource",
    "SplitSpec",
    "MaskRule",
    "mask_rule",
    "parse_ranges",
    "parse_label_values",
    "load_cells_spec",
    "prepare_dataset",
    "SPLITS",
]
