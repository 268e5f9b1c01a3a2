"""The MONAI Label app: one segmentation model (the bundle's ScSAM), its training, a checking local datastore.

Its tasks are MONAI Label's bundle tasks (``BundleInferTask``, ``BundleTrainTask``) with what ScSAM needs on
top (:mod:`.infer`, :mod:`.train`); the app is what MONAI Label's ``monaibundle`` sample app is for a Model Zoo
bundle, with one model, the served head in ``model_dir`` and a datastore that checks uploads.

``apps/scsam/main.py`` only imports :class:`ScSAMLabelApp`; ``monailabel start_server --app apps/scsam``
finds it there. App settings (``--conf KEY VALUE``, all optional):

- ``bundle``, ``configs``, ``overrides``, ``device``: the bundle and how to run it
  (:class:`~scsam_monai.label.bundle.BundleSettings`);
- ``model_name``: the model's name in the REST API and the clients (default ``scsam``);
- ``model_dir``: where the trained head ``model.pt`` lives (default ``<app>/model``);
- ``head_checkpoint``: a trained head copied to ``<model_dir>/model.pt`` when none is there yet;
- ``max_epochs``, ``val_split``: training defaults (a request's values win);
- ``skip_trainers``: ``true`` to serve inference only;
- ``preload``: ``true`` to load the network on every device at start-up (``BundleInferTask``'s setting);
- ``warmup``: ``false`` to skip the warm-up that runs when the server has started (default ``true``: one
  canvas-sized batch in the background, which compiles the SAM encoder on a CPU; ``/info`` reports its state under
  ``models.<model_name>.warmup``, see :mod:`.warmup`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from monailabel.config import settings as server_settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from scsam_monai import __version__
from scsam_monai.label.bundle import BundleSettings
from scsam_monai.label.datastore import CheckedLocalDatastore
from scsam_monai.label.infer import ScSAMInferTask
from scsam_monai.label.train import ScSAMTrainTask

__all__ = ["ScSAMLabelApp"]

logger = logging.getLogger(__name__)


class ScSAMLabelApp(MONAILabelApp):
    """MONAI Label app serving the ScSAM bundle (see the module docstring for its ``--conf`` settings).

    Args:
        app_dir: the app folder (``apps/scsam``).
        studies: the studies folder (or a DICOMweb URL, handled by MONAI Label's own datastores).
        conf: ``--conf`` settings, all strings.
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = dict(conf or {})
        self.bundle = BundleSettings.from_conf(conf)
        self.class_names = self.bundle.class_names()
        self.model_name = conf.get("model_name") or "scsam"
        self.model_dir = Path(conf.get("model_dir") or Path(app_dir) / "model").resolve()
        self.model_path = self.model_dir / "model.pt"
        initial = conf.get("head_checkpoint")
        if initial and not self.model_path.is_file():
            if not Path(initial).is_file():
                raise ValueError(f"--conf head_checkpoint {initial}: file not found.")
            self.model_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(initial, self.model_path)
            logger.info(f"Serving the head {initial} (copied to {self.model_path})")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="ScSAM subcellular EM segmentation",
            description="ScSAM (frozen SAM + MAE encoders, trained head): nucleus, mitochondria, granules in EM",
            version=__version__,
            labels={name: value for value, name in enumerate(self.class_names) if value > 0},
        )

    def on_init_complete(self) -> None:
        """MONAI Label's start-up hook (server process only), then the inference tasks' warm-up in the background.

        Only the server calls this hook: MONAI Label's training and scoring processes build the app too, and must
        not spend minutes compiling an encoder they never run.
        """
        super().on_init_complete()
        for task in self._infers.values():
            if isinstance(task, ScSAMInferTask):
                task.start_warmup()

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return CheckedLocalDatastore(
            self.studies,
            num_classes=len(self.class_names) - 1,
            auto_reload=server_settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=server_settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {self.model_name: ScSAMInferTask(self.bundle, self.model_path, self.conf)}

    def init_trainers(self) -> dict[str, TrainTask]:
        if str(self.conf.get("skip_trainers", "false")).lower() == "true":
            return {}
        task = ScSAMTrainTask(
            self.bundle,
            self.model_path,
            self.model_dir / "train",
            self.conf,
            max_epochs=int(self.conf.get("max_epochs", 20)),
            val_split=float(self.conf.get("val_split", 0.2)),
        )
        return {self.model_name: task}

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": Random(), "first": First()}
