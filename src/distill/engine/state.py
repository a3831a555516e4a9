"""Run state and checkpoints: what a run has done (steps, epochs, best validation, history), the
``last.pt`` / ``best.pt`` payloads, and resuming from ``last.pt`` (refused when a setting that changes
the result differs, unless ``allow_changes``).

``last.pt`` holds everything needed to continue exactly (weights, objective, optimizer, grad scaler,
history, the run's shape); ``best.pt`` stays lean: the weights to deploy and where they came from.
Only rank 0 writes; every rank reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill import distributed
from distill.checkpoint import load_checkpoint, load_model_weights, remove_orphan_temps, save_checkpoint
from distill.config import RESULT_NEUTRAL_TRAIN, TrainConfig, diff_settings
from distill.engine.evaluation import no_best


@dataclass
class RunState:
    """Where a run stands: optimizer steps taken, epochs completed, the best validation so far
    (``epoch`` 1-based, ``val_acc``, ``val_nll``) and one record per completed epoch."""

    step: int = 0
    epoch: int = 0
    best: dict[str, float] = field(default_factory=no_best)
    history: list[dict[str, Any]] = field(default_factory=list)
    batch: int = 0  # batches of epoch ``epoch`` already taken (a mid-epoch checkpoint), else 0
    streams: dict[str, Any] | None = None  # that checkpoint's random streams and running loss sums
    memory_format: dict[str, Any] | None = None  # the layout trained in (engine.layout.MemoryFormat.record)
    teacher_forward: dict[str, Any] | None = None  # a live teacher's precision and compile (engine.teacher_forward)


def run_shape(cfg: TrainConfig, train_examples: int, seed: int) -> dict[str, Any]:
    """What must not change between a run and its resumption, or the result would differ silently:
    every train setting but those that leave the result unchanged (``config.RESULT_NEUTRAL_TRAIN``),
    the seed and the number of training examples."""
    settings = {k: v for k, v in cfg.model_dump(mode="json").items()
                if k not in ("batch_size", "epochs", *RESULT_NEUTRAL_TRAIN)}
    return {"train_examples": train_examples, "batch_size": cfg.batch_size, "epochs": cfg.epochs, "seed": seed,
            "train": settings}


def _auto_layout_as_saved(shape: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    """``train.channels_last: auto`` resumes in the layout ``last.pt`` was trained in (recorded as its
    ``memory_format``, or by an older file as ``channels_last: true/false``): not a changed setting."""
    train, saved_train = shape.get("train"), saved.get("train")
    if not (isinstance(train, dict) and isinstance(saved_train, dict) and train.get("channels_last") == "auto"
            and "channels_last" in saved_train):
        return shape
    return {**shape, "train": {**train, "channels_last": saved_train["channels_last"]}}


def _layout_of(saved_shape: dict[str, Any]) -> dict[str, Any] | None:
    """The layout of a ``last.pt`` written before the memory format was recorded: its ``train.channels_last``."""
    setting = (saved_shape.get("train") or {}).get("channels_last")
    if not isinstance(setting, bool):
        return None
    return {"format": "channels_last" if setting else "contiguous", "decided_by": "train.channels_last",
            "ms_per_step": {}}


class Checkpoints:
    """``out_dir/last.pt`` and ``out_dir/best.pt`` of one model (none when ``out_dir`` is None).

    ``parts`` are the live objects a full checkpoint holds besides the model (``objective``,
    ``optimizer`` and, under fp16, ``scaler``); ``extra`` goes into every payload (e.g. the
    model's spec, for rebuilding it)."""

    def __init__(self, out_dir: Path | None, model: nn.Module, parts: dict[str, Any], shape: dict[str, Any],
                 extra: dict[str, Any], tag: str, resume: bool) -> None:
        self.model, self.parts, self.shape, self.extra, self.tag = model, parts, shape, extra, tag
        self.last_path = out_dir / "last.pt" if out_dir else None
        self.best_path = out_dir / "best.pt" if out_dir else None
        self.main = distributed.is_main()
        self.written: str | None = None  # where the run stood when last.pt was written (or resumed from)
        self.resuming = resume and self.last_path is not None and self.last_path.exists()
        distributed.check_same((shape, self.resuming), f"[{tag}] the run's shape or whether {self.last_path} exists",
                               "every rank must run the same config and see the same files (a shared filesystem)")
        if self.main and out_dir is not None:  # what a process killed while writing a checkpoint left behind
            remove_orphan_temps(out_dir, recursive=False)

    def kept(self) -> str:
        """What is left on disk if training stopped now: the last ``last.pt`` this run wrote or resumed from."""
        if self.written is not None and self.last_path is not None and self.last_path.exists():
            return f"the last good checkpoint is {self.last_path} ({self.written})"
        return "no checkpoint had been written yet"

    @staticmethod
    def _position(epoch: int, step: int, batch: int) -> str:
        return f"step {step}, in epoch {epoch + 1}" if batch else f"epoch {epoch}"

    def resume(self, device: torch.device, allow_changes: bool,
               progress: Callable[[str], None] | None) -> RunState | None:
        """The state saved in ``last.pt``, with the model, objective, optimizer and scaler loaded from
        it; None when not resuming (``resume`` off, or no ``last.pt``). Refuses a run trained with other settings unless
        ``allow_changes``."""
        last_path, tag = self.last_path, self.tag
        if not self.resuming or last_path is None:
            return None
        saved = load_checkpoint(last_path, map_location=device)
        saved_shape = dict(saved.get("run_shape") or {})
        if isinstance(saved_shape.get("train"), dict):  # train keys an older version did not write: their defaults
            defaults = run_shape(TrainConfig.model_validate({}), 0, 0)["train"]
            saved_shape["train"] = {**defaults, **saved_shape["train"]}
        shape = _auto_layout_as_saved(self.shape, saved_shape)
        # a checkpoint from before a key was recorded: that key cannot be compared
        changed = diff_settings({k: saved_shape.get(k, v) for k, v in shape.items()}, shape)
        if changed and not allow_changes:
            raise ValueError(
                f"cannot resume {last_path}: it was trained with different settings ({'; '.join(changed)}). "
                "Resume with the original settings, start a new run under another name, or pass "
                "allow_changes=True (distill run: --allow-changes) to continue with the new ones."
            )
        if changed and progress:
            progress(f"[{tag}] resuming {last_path} with changed settings: {'; '.join(changed)}")
        load_model_weights(self.model, saved, last_path, self.extra.get("model_spec"))
        self.parts["objective"].load_state_dict(saved["objective"])
        self.parts["optimizer"].load_state_dict(saved["optimizer"])
        if self.parts.get("scaler") is not None and saved.get("scaler"):
            self.parts["scaler"].load_state_dict(saved["scaler"])
        state = RunState(step=saved["step"], epoch=saved["epoch"], best=dict(saved["best"]),
                         history=list(saved["history"]), batch=saved.get("batch", 0), streams=saved.get("streams"),
                         memory_format=saved.get("memory_format") or _layout_of(saved_shape),
                         teacher_forward=saved.get("teacher_forward"))
        self.written = self._position(state.epoch, state.step, state.batch)
        if progress:
            where = f" and {state.batch} steps of epoch {state.epoch + 1}" if state.batch else ""
            progress(f"[{tag}] resuming from {last_path} after epoch {state.epoch}{where}")
        return state

    def save(self, path: Path | None, state: RunState, epoch: int, full: bool,
             position: dict[str, Any] | None = None) -> None:
        """Write ``path`` (rank 0 only) at the end of ``epoch`` (1-based); ``full``: with everything
        needed to resume (``last.pt``), else the lean file to deploy (``best.pt``). ``position``: within
        the next epoch, a mid-epoch ``last.pt`` (``batch``: batches taken, ``streams``)."""
        if path is not None and full:
            self.written = self._position(epoch, state.step, (position or {}).get("batch", 0))
        if path is None or not self.main:
            return
        payload: dict[str, Any] = {**self.extra, "model": self.model.state_dict(), "epoch": epoch,
                                   "step": state.step, "best": state.best, **(position or {})}
        if full:
            scaler = self.parts.get("scaler")
            payload.update(history=state.history, run_shape=self.shape, memory_format=state.memory_format,
                           teacher_forward=state.teacher_forward,
                           objective=self.parts["objective"].state_dict(),
                           optimizer=self.parts["optimizer"].state_dict(),
                           scaler=scaler.state_dict() if scaler is not None else None)
        save_checkpoint(path, payload)

    def load_best(self, device: torch.device) -> None:
        """Load ``best.pt``'s weights into the model on every rank (rank 0 wrote it)."""
        best_path = self.best_path
        if best_path is None:
            return
        distributed.barrier()  # rank 0 has written it
        distributed.check_same(best_path.exists(), f"[{self.tag}] whether {best_path} exists",
                               "every rank loads it: put output_dir on a filesystem all nodes share")
        if best_path.exists():
            load_model_weights(self.model, load_checkpoint(best_path, map_location=device), best_path,
                               self.extra.get("model_spec"))
