"""`BratsScoreHandler`: per-case BraTS scores inside a MONAI evaluator, written like `cggm-seg evaluate`.

A bundle's ``evaluate.json`` attaches it to its ``SupervisedEvaluator``; each case is scored on the
region masks the post-transforms produce, by the ``brats2021`` (volume Dice/HD95) or the
``brats2023`` (lesion-wise) scheme, so the bundle and the command give the same CSV, summary JSON
and box plots and share one scoring and one writing code path. Training's validation keeps MONAI's
fast volume Dice: lesion-wise scoring is for the final table, not for every epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor, decollate_batch
from monai.utils import CommonKeys, ImageMetaKey, convert_to_numpy

from cggm_seg.brats_labels import REGIONS, case_id_from_filename, get_convention
from cggm_seg.errors import UserError
from cggm_seg.io import check_new_outputs
from cggm_seg.metrics.brats import region_scores
from cggm_seg.metrics.folders import check_label_values
from cggm_seg.metrics.lesionwise import lesionwise_mask_scores
from cggm_seg.metrics.scoring import Scheme, crop_margin, crop_to_labels, lesionwise_columns
from cggm_seg.metrics.summaries import format_summary, output_paths, write_scores

logger = logging.getLogger(__name__)


class BratsScoreHandler:
    """Scores every case of an evaluation run and writes the CSV, summary JSON and box plots at the end.

    Each item of ``engine.state.output`` needs ``pred`` and ``label``: either 3 binary channels
    (TC, WT, ET), as after ``Activationsd(sigmoid) + AsDiscreted(threshold=0.5)``, or 1 channel
    holding a label map in ``convention``. The case id comes from ``case_id_fn(filename_or_obj)``
    of the first of pred/label/image that carries a file name, the voxel spacing from that
    tensor's affine (so predictions inverted to the original grid are scored in mm there).
    ``scheme`` is ``brats2021`` (the default: region Dice/HD95) or ``brats2023`` (lesion-wise scores
    with ``challenge``'s parameters and the NSD at ``nsd_tolerance_mm``), the columns of
    ``cggm-seg evaluate --scheme``. Existing outputs are refused at the start of a run unless
    ``overwrite``; under torch.distributed every rank scores its own cases and rank 0 writes them all.
    """

    def __init__(
        self,
        output_dir: str,
        convention: str = "brats2021",
        case_id_fn: Callable[[str], str] | None = None,
        overwrite: bool = False,
        scheme: str = "brats2021",
        challenge: str = "GLI",
        nsd_tolerance_mm: float = 1.0,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.convention = get_convention(convention)
        self.case_id_fn = case_id_fn or case_id_from_filename
        self.overwrite = overwrite
        self.scheme = Scheme(scheme, challenge, nsd_tolerance_mm)
        self.rows: list[dict] = []

    @property
    def csv_path(self) -> Path:
        return self.output_dir / "scores.csv"

    @property
    def summary_path(self) -> Path:
        return self.output_dir / "summary.json"

    def attach(self, engine: Engine) -> None:
        """Register on the engine's STARTED, ITERATION_COMPLETED and COMPLETED events."""
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        if idist.get_rank() == 0:
            plots = output_paths(self.csv_path, self.scheme)[1]
            check_new_outputs((self.csv_path, self.summary_path, *plots), self.overwrite)
        self.rows = []

    def _iteration_completed(self, engine: Engine) -> None:
        output = engine.state.output
        for item in output if isinstance(output, list) else decollate_batch(output):
            self.rows.append(self.score_item(item))

    def score_item(self, item: dict) -> dict:
        """``{"case_id", <the scheme's metrics>}`` of one decollated evaluator output."""
        named = [
            item[k]
            for k in (CommonKeys.PRED, CommonKeys.LABEL, CommonKeys.IMAGE)
            if isinstance(item.get(k), MetaTensor) and item[k].meta.get(ImageMetaKey.FILENAME_OR_OBJ)
        ]
        source = named[0] if named else None
        if source is None:
            prefix = f"rank{idist.get_rank()}_" if idist.get_world_size() > 1 else ""
            case_id, spacing = f"{prefix}case_{len(self.rows):04d}", [1.0, 1.0, 1.0]
            logger.warning("no file name in the evaluator output; scoring %s with 1 mm voxels", case_id)
        else:
            case_id = self.case_id_fn(str(source.meta[ImageMetaKey.FILENAME_OR_OBJ]))
            spacing = [float(s) for s in source.pixdim[:3]]
        pred = self._region_masks(item[CommonKeys.PRED], f"case {case_id}: pred")
        label = self._region_masks(item[CommonKeys.LABEL], f"case {case_id}: label")
        pred, label = crop_to_labels(pred, label, crop_margin(self.scheme))
        if not self.scheme.lesionwise:
            return {"case_id": case_id, **region_scores(pred, label, spacing)}
        scores = lesionwise_mask_scores(pred, label, spacing, self.scheme.settings)
        return {"case_id": case_id, **lesionwise_columns(scores)}

    def _region_masks(self, tensor: torch.Tensor, where: str) -> np.ndarray:
        array = convert_to_numpy(tensor)
        if array.shape[0] == len(REGIONS):
            if not np.isin(array, (0, 1)).all():
                raise UserError(
                    f"{where} is not binary; end the postprocessing with AsDiscreted(threshold=0.5)"
                )
            return array.astype(bool)
        if array.shape[0] == 1:
            check_label_values(array[0], self.convention, where)
            return self.convention.region_masks(array[0])
        raise UserError(
            f"{where} has {array.shape[0]} channels; expected 3 region masks (TC, WT, ET) "
            f"or 1 {self.convention.name} label map"
        )

    def _completed(self, engine: Engine) -> None:
        rows = [row for part in idist.all_gather(self.rows) for row in part]
        if idist.get_rank() != 0:
            return
        if not rows:
            logger.warning("no cases were scored; %s not written", self.csv_path)
            return
        summary = write_scores(
            rows, self.csv_path, self.summary_path, force=self.overwrite, scheme=self.scheme
        )
        logger.info(
            "BraTS scores of %d cases written to %s\n%s", len(rows), self.csv_path, format_summary(summary)
        )
