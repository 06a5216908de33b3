"""Checkpoints that survive a kill, and a resume that restores everything and continues only its own run.

MONAI's ``CheckpointSaver`` hands Ignite a non-atomic ``DiskSaver``, and Ignite removes the previous
checkpoint before it writes the next one: a kill in between leaves a truncated file and nothing older,
and every later resume fails on it. :class:`SafeCheckpointSaver` writes each file beside its target,
flushes it to disk and renames it into place (``cggm_seg.io.atomic_path``), and removes the file it
replaces only afterwards. A resume (:func:`resume_checkpoint`) takes the newest checkpoint that loads,
skipping broken ones with a warning, and refuses one trained on other cases. Each checkpoint also holds
a :class:`RunRecord` (that identity and the best validation score, so a resume cannot replace
``model.pt`` with a worse model) and the :class:`RandomStates`, so a resumed run draws the same
batches and augmentations as the uninterrupted one.
(:class:`cggm_seg.stop_on_nonfinite.StopOnNonFiniteLoss` keeps NaN weights out of all of them.)
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import random
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.engines import Workflow
from monai.handlers import CheckpointSaver
from monai.transforms import Randomizable

from cggm_seg.bundle import CHECKPOINT_PATTERN
from cggm_seg.errors import UserError
from cggm_seg.io import atomic_path, os_reason
from cggm_seg.networks.utils import unwrap

logger = logging.getLogger(__name__)

#: what ``io.atomic_path`` leaves behind when a kill interrupts a checkpoint write
_STALE_TEMPORARY = re.compile(r"^\.(checkpoint_epoch=\d+|checkpoint_final|model)\.\w{8}\.pt$")


# ------------------------------------------------------------------------------------------ saving
def epoch_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """The ``checkpoint_epoch=N.pt`` files in ``folder`` as (N, path), oldest first."""
    return sorted(
        (int(m.group(1)), path)
        for path in Path(folder).glob("*.pt")
        if (m := CHECKPOINT_PATTERN.fullmatch(path.name))
    )


class _AtomicDiskSaver(BaseSaveHandler):
    """Ignite save handler writing through ``io.atomic_path``; ``filename`` fixes the name, as MONAI's does.

    Ignite's ``Checkpoint`` calls ``remove(old)`` before it saves the new file; the removal is held
    back until the new file is in place, so a kill at any moment leaves at least one complete file. A
    write that fails (disk full, permission lost) is one line naming the file and the OS's reason, not
    torch's page of ``unexpected pos`` tracebacks, and leaves the previous file as it was.
    """

    def __init__(self, folder: str | Path, filename: str | None = None) -> None:
        self.folder = Path(folder)
        self.filename = filename
        self._replaced: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        name = self.filename or filename
        try:
            # through a Python file, so a failed write raises the OS's error (torch's own writer loses it)
            with atomic_path(self.folder / name, overwrite=True) as temporary, temporary.open("wb") as stream:
                torch.save(checkpoint, stream)
        except Exception as err:
            reason = os_reason(err)
            if reason is None:  # not the disk's or the OS's doing: a bug, keep its traceback
                raise
            raise UserError(f"checkpoint: cannot write {self.folder / name}: {reason}") from err
        for old in self._replaced:
            if old != name:
                (self.folder / old).unlink(missing_ok=True)
        self._replaced.clear()

    def remove(self, filename: str) -> None:
        self._replaced.append(self.filename or filename)


class SafeCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments and files) whose files survive a kill at any moment.

    It also removes the temporary files a killed write left in ``save_dir`` when attached; takes over
    the ``checkpoint_epoch=N.pt`` files already there (see :meth:`_take_over_checkpoints`); and its
    :meth:`state_dict` holds the best-score bookkeeping of ``save_key_metric``, which :class:`RunRecord`
    saves so that a resumed run keeps comparing against the best score so far.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        final_filename: str | None = None,
        key_metric_filename: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            save_dir,
            save_dict,
            final_filename=final_filename,
            key_metric_filename=key_metric_filename,
            **kwargs,
        )
        for checkpoint, filename in (
            (self._final_checkpoint, final_filename),
            (self._key_metric_checkpoint, key_metric_filename),
            (self._interval_checkpoint, None),
        ):
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(save_dir, filename)
        self._taken_over = False

    def attach(self, engine: Engine) -> None:
        for stale in Path(self.save_dir).glob(".*.pt"):
            if _STALE_TEMPORARY.match(stale.name):
                logger.info("removing %s, left by an interrupted checkpoint write", stale)
                stale.unlink(missing_ok=True)
        super().attach(engine)
        if self._interval_checkpoint is not None and self.epoch_level:
            engine.add_event_handler(Events.EPOCH_STARTED, self._take_over_checkpoints)

    def _take_over_checkpoints(self, engine: Engine) -> None:
        """At this run's first epoch, the ``checkpoint_epoch=N.pt`` files in ``save_dir`` become its own.

        Ignite counts only the files it wrote, so without this every resume would leave its
        predecessor's files behind. Files of earlier epochs (the run this one resumes) count towards
        ``n_saved``; files of this epoch or later belong to a run that was abandoned (``resume`` false,
        or they did not load) and would be what a later resume picks: they go once this run's first
        checkpoint is in place.
        """
        if self._taken_over:
            return
        self._taken_over = True
        found = epoch_checkpoints(self.save_dir)
        earlier = [(epoch, path) for epoch, path in found if epoch < engine.state.epoch]
        n_saved = self._interval_checkpoint.n_saved
        kept = earlier[-n_saved:] if n_saved else earlier
        for _, path in earlier[: len(earlier) - len(kept)]:
            path.unlink(missing_ok=True)
        self._interval_checkpoint.load_state_dict({"_saved": [(epoch, path.name) for epoch, path in kept]})
        abandoned = [path.name for epoch, path in found if epoch >= engine.state.epoch]
        if abandoned:
            logger.info(
                "%s: %s of an earlier run will be replaced by this run's checkpoints",
                self.save_dir,
                ", ".join(abandoned),
            )
        for name in abandoned:
            self._interval_checkpoint.save_handler.remove(name)

    def state_dict(self) -> dict:
        """The best-score bookkeeping of ``save_key_metric`` (empty without it)."""
        if self._key_metric_checkpoint is None:
            return {}
        saved = self._key_metric_checkpoint.state_dict()["_saved"]  # plain types, for weights_only loading
        return {"_saved": [(float(priority), str(name)) for priority, name in saved]}


# ----------------------------------------------------------------------------------- what is saved
def _case_key(entry: Mapping[str, Any]) -> str:
    """A case's name that survives moving the dataset: its id, else its first image's file name."""
    if entry.get("case_id"):
        return str(entry["case_id"])
    image = entry.get("image")
    return Path(str(image[0] if isinstance(image, (list, tuple)) else image)).name


def run_identity(split: Sequence[Sequence[Mapping[str, Any]]], fold: Any, datalist: Any) -> dict[str, Any]:
    """What makes two trainings the same run: the cases they train and validate on.

    ``fold`` and ``datalist`` only go into messages: the same cases under a moved datalist are the same
    run, and an explicit ``split`` (the benchmark's) is compared by its cases alone.
    """
    train, validation = ([_case_key(e) for e in part] for part in split)
    digest = hashlib.sha256(json.dumps([sorted(train), sorted(validation)]).encode()).hexdigest()[:16]
    return {
        "cases": digest,
        "fold": fold,
        "datalist": str(datalist),
        "train_cases": len(train),
        "validation_cases": len(validation),
    }


class RunRecord:
    """The run's identity and its best validation score, saved with every training checkpoint.

    MONAI keeps the best score in the evaluator's state and in the ``model.pt`` saver, and neither is
    in the trainer's checkpoint: without this the first validation after a resume would replace
    ``model.pt`` with whatever it scores.
    """

    def __init__(
        self,
        identity: dict[str, Any],
        evaluator: Workflow,
        best_model_saver: SafeCheckpointSaver | None = None,
    ) -> None:
        self.identity = identity
        self.evaluator = evaluator
        self.best_model_saver = best_model_saver  # None on the DDP ranks that do not save

    def state_dict(self) -> dict[str, Any]:
        state = self.evaluator.state
        return {
            "identity": self.identity,
            "best_metric": float(state.best_metric),
            "best_metric_epoch": int(state.best_metric_epoch),
            "best_model": self.best_model_saver.state_dict() if self.best_model_saver else {},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.evaluator.state.best_metric = state["best_metric"]
        self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]
        if self.best_model_saver is not None and state["best_model"]:
            self.best_model_saver.load_state_dict(state["best_model"])


def _generators(transform: Any, seen: set[int]) -> Iterator[np.random.RandomState]:
    """Every random generator of ``transform`` (a ``Compose`` or a list), in the order MONAI seeds them."""
    if id(transform) in seen:
        return
    seen.add(id(transform))
    if isinstance(transform, (list, tuple)):
        for item in transform:
            yield from _generators(item, seen)
    elif isinstance(transform, Randomizable):
        yield transform.R
        for key in sorted(vars(transform)):
            yield from _generators(vars(transform)[key], seen)


def _numpy_state(state: tuple) -> tuple:
    """A numpy generator state with its key as a tensor: ``torch.load(weights_only=True)`` refuses arrays."""
    name, key, *rest = state
    return (name, torch.from_numpy(key.astype(np.int64)), *rest)


def _from_numpy_state(state: Sequence) -> tuple:
    name, key, *rest = state
    return (name, key.cpu().numpy().astype(np.uint32), *rest)


class RandomStates:
    """The random generators training draws from, saved with each checkpoint and restored on resume.

    torch (CPU and CUDA: shuffling, loader seeds), numpy, Python, and the augmentation transforms of
    ``dataset``: restored, a resumed run draws the batches and augmentations the uninterrupted run
    would have, so it ends with the same weights. With loader workers (``num_workers > 0``) the
    augmentations run in the workers, whose generators are not saved: their draws after a resume differ.
    """

    def __init__(self, dataset: Any) -> None:
        self.transform = getattr(dataset, "transform", None)

    def _transform_generators(self) -> list[np.random.RandomState]:
        # looked up each time: MONAI's DataLoader replaces the transforms' generators when it is built
        return list(_generators(self.transform, set()))

    def state_dict(self) -> dict[str, Any]:
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_state(np.random.get_state()),
            "python": random.getstate(),
            "transforms": [_numpy_state(g.get_state()) for g in self._transform_generators()],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["torch"].cpu())
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        np.random.set_state(_from_numpy_state(state["numpy"]))
        random.setstate(state["python"])
        generators = self._transform_generators()
        if len(generators) != len(state["transforms"]):
            logger.warning(
                "resume: the augmentations differ from the checkpoint's (%d random transforms, "
                "%d saved); their random state is not restored",
                len(generators),
                len(state["transforms"]),
            )
            return
        for generator, saved in zip(generators, state["transforms"]):
            generator.set_state(_from_numpy_state(saved))


# ---------------------------------------------------------------------------------------- resuming
def _load(path: Path) -> dict | None:
    """The checkpoint at ``path``, or None (and one warning line naming it) when it does not load."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure to load means "not a checkpoint we can resume"
        logger.warning("resume: skipping %s: it does not load (%s)", path, _first_line(err))
        return None


def _first_line(err: Exception) -> str:
    """``Type: message``, cut to its first line: torch's load errors run to pages."""
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"


def _check_identity(path: Path, checkpoint: Mapping, identity: Mapping[str, Any], allow_other: bool) -> None:
    record = checkpoint.get("run")
    if record is None:
        raise UserError(
            f"resume: {path} has no run record (written by a bundle before version 0.3.0); "
            "continue it with that version, or start over: another output_dir or --resume false"
        )
    saved = record["identity"]
    if saved["cases"] == identity["cases"] or allow_other:
        return
    raise UserError(
        f"resume: {path} was trained on fold {saved['fold']} of {saved['datalist']} ({saved['train_cases']} "
        f"training cases), this run is fold {identity['fold']} of {identity['datalist']} with other cases, "
        "whose validation cases it may have trained on; use another output_dir, --resume false to start "
        "over, or --allow_other_fold true to continue it anyway"
    )


#: what ``torch.save(ddp.state_dict())`` puts before every name; Ignite's savers (the bundles') leave it out
_DDP_PREFIX = "module."


def _strip_ddp_prefix(module: torch.nn.Module, state_dict: dict, prefix: str, *_: Any) -> None:
    """Load pre-hook: the weights of a file saved from the DDP wrapper load into the unwrapped network."""
    if not prefix:
        torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state_dict, _DDP_PREFIX)


def _check_weights(
    path: str | Path, weights: Mapping[str, Any], network: torch.nn.Module, setting: str
) -> None:
    """One error line when the state dict ``weights`` does not fit ``network``: another network wrote it.

    Under DDP ``network`` is the wrapper, whose names start with ``module.``; the files hold the network
    inside it (as Ignite saves it), so either is compared unwrapped. A file that was saved with the prefix
    fits as well, and ``network`` is taught to drop the prefix when MONAI's ``CheckpointLoader`` loads it.
    """
    network = unwrap(network)
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    found = {k: tuple(getattr(v, "shape", ())) for k, v in weights.items()}
    if (
        found
        and all(k.startswith(_DDP_PREFIX) for k in found)
        and not any(k.startswith(_DDP_PREFIX) for k in expected)
    ):
        found = {k[len(_DDP_PREFIX) :]: shape for k, shape in found.items()}
        network.register_load_state_dict_pre_hook(_strip_ddp_prefix)
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    if not (missing or unexpected or reshaped):
        return
    kinds = ((missing, "weights missing"), (unexpected, "unexpected weights"), (reshaped, "of other shape"))
    differences = [f"{len(names)} {what}, e.g. {names[0]}" for names, what in kinds if names]
    raise UserError(
        f"{setting}: {path} was written with another network_def ({'; '.join(differences)}); give the same "
        "network settings it was trained with (brats_cggm before 0.5.0: --network_def#norm instance)"
    )


def check_network_fits(path: str | Path, network: torch.nn.Module, setting: str = "checkpoint") -> None:
    """Before MONAI's ``CheckpointLoader`` loads ``path`` into ``network``: one clear line, not a page of
    missing keys, when the file was written by another network (a bundle version, other channels)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which, in one line
        raise UserError(f"{setting}: {path} does not load ({_first_line(err)})") from err
    weights = state["network"] if "network" in state else state  # model.pt holds the state dict itself
    _check_weights(path, weights, network, setting)


def resume_checkpoint(
    ckpt_dir: str | Path,
    identity: Mapping[str, Any],
    resume: bool,
    allow_other: bool = False,
    network: torch.nn.Module | None = None,
) -> str | None:
    """The newest ``checkpoint_epoch=N.pt`` in ``ckpt_dir`` that loads, or None to start from scratch.

    A checkpoint that does not load is skipped with one warning line naming it; one from a run on other
    cases (see :func:`run_identity`) is refused unless ``allow_other``, and one whose weights do not fit
    ``network`` (when given) is refused with one line.
    """
    if not resume:
        return None
    for _, path in reversed(epoch_checkpoints(ckpt_dir)):
        checkpoint = _load(path)
        if checkpoint is not None:
            _check_identity(path, checkpoint, identity, allow_other)
            if network is not None:
                _check_weights(path, checkpoint["network"], network, "resume")
            return str(path)
    return None


class ResumeAtEpoch:
    """A resumed run goes on at the checkpoint's epoch with its own epoch length and learning-rate schedule.

    The trainer state in a checkpoint holds the iterations per epoch of the run that wrote it, and the
    schedule its warm-up and total steps: restored as they are, a resume under another number of DDP
    ranks (or another ``batch_size``) runs epochs of the old length over the new loader, and one with
    more ``--epochs`` follows the old schedule past its end, where the cosine climbs back up.
    Checkpoints are written at the end of an epoch, so that epoch is where both continue; a resume of
    the same run changes nothing.
    """

    def __init__(self, lr_scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        self.lr_scheduler = lr_scheduler
        self.schedule = copy.deepcopy(lr_scheduler.state_dict())  # this run's, before a checkpoint loads

    def attach(self, trainer: Engine) -> None:
        """After the ``CheckpointLoader``: Ignite calls the ``STARTED`` handlers in the order they came."""
        trainer.add_event_handler(Events.STARTED, self._continue, trainer.state.epoch_length)

    def _continue(self, trainer: Engine, epoch_length: int) -> None:
        state = trainer.state
        state.epoch_length, state.iteration = epoch_length, state.epoch * epoch_length
        self.lr_scheduler.load_state_dict({**self.schedule, "last_epoch": state.iteration - 1})
        with warnings.catch_warnings():  # "step() before optimizer.step()": on purpose, to set the rate
            warnings.simplefilter("ignore", UserWarning)
            self.lr_scheduler.step()


def log_resume(resume_from: str | None, resume: bool, ckpt_dir: str | Path) -> bool:
    """One line saying where training starts; returns True."""
    if resume_from:
        logger.info("resume: continuing from %s", resume_from)
    else:
        logger.info(
            "resume: %s; training starts from scratch",
            f"no complete checkpoint in {ckpt_dir}" if resume else "off",
        )
    return True
