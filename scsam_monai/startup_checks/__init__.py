"""Checks a bundle run makes before it starts: settings, checkpoints, the datalist and its files.

A multi-hour training should stop in its first seconds, with one message that lists every problem, instead of
after the embeddings of half the data set have been computed. :func:`validate_run` is the bundle's
``startup_checks`` (``train.yaml``, first in ``initialize``) and checks, one module per job:

- :mod:`.settings`: keys of the ``head`` section (a misspelled ``--head#fussion concat`` adds a key nothing
  reads) and its values, and ``class_names``;
- :mod:`.config_keys`: when run by ``python -m monai.bundle run``, every key that an overlay file or a
  command-line override sets must be one the bundle knows (or one that the configuration refers to), with the
  closest known key suggested;
- :mod:`.checkpoints`: a missing SAM checkpoint is reported with the file, its expected SHA-256 and URL from
  ``large_files.yml`` and the download command; a listed checkpoint is verified against its SHA-256; a file
  listed for another SAM architecture than ``sam_arch`` is refused;
- :mod:`.datalist`: the items each split of the run reads, from the datalist file (it exists, is valid JSON and
  has the checked splits) or from an override (``train#dataset#data`` / ``validate#dataset#data``, as MONAI
  Label's ``BundleTrainTask`` sets them): every split non-empty, an ``image`` (and a ``label``) in every item,
  every file there, classes that agree with ``class_names``. ``train.yaml`` reads its default items with
  :func:`read_split`, so that the check knows where they came from.

Every problem is collected and raised together as one :class:`ConfigValidationError`. Import the names below
from this package.
"""

from __future__ import annotations

from scsam_monai.startup_checks.checkpoints import SAM_ARCHS, check_checkpoint, read_large_files
from scsam_monai.startup_checks.config_keys import bundle_command_line, check_config_keys
from scsam_monai.startup_checks.datalist import DatalistSplit, check_datalist, check_items, read_split
from scsam_monai.startup_checks.errors import ConfigValidationError, suggest
from scsam_monai.startup_checks.run import check_data, check_flags, check_input, require_input, validate_run
from scsam_monai.startup_checks.settings import HEAD_KEYS, check_class_names, check_head

__all__ = [
    "ConfigValidationError",
    "HEAD_KEYS",
    "SAM_ARCHS",
    "validate_run",
    "check_head",
    "check_class_names",
    "check_checkpoint",
    "check_datalist",
    "check_items",
    "check_data",
    "check_flags",
    "read_split",
    "DatalistSplit",
    "check_input",
    "require_input",
    "check_config_keys",
    "bundle_command_line",
    "read_large_files",
    "suggest",
]
