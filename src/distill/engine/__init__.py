"""The training engine: :func:`fit` (a short loop, :mod:`distill.engine.loop`) and the small units
around it: setup (device, precision, compile, DDP), optimizer and schedule, run state and
checkpoints, evaluation and selection, divergence policy, callbacks."""

from distill.engine.callbacks import Callback, Callbacks, LogRecords, LossTracker, ProgressLines, StepBar
from distill.engine.divergence import NonFiniteLossError
from distill.engine.evaluation import Evaluation, evaluate, predict_logits, split_logits
from distill.engine.loop import FitResult, fit
from distill.engine.optim import build_optimizer, lr_factor
from distill.engine.setup import TeacherPort, resolve_amp, resolve_device
from distill.engine.state import Checkpoints, RunState

__all__ = [
    "Callback", "Callbacks", "Checkpoints", "Evaluation", "FitResult", "LogRecords", "LossTracker",
    "NonFiniteLossError", "ProgressLines", "RunState", "StepBar", "TeacherPort", "build_optimizer", "evaluate",
    "fit", "lr_factor", "predict_logits", "resolve_amp", "resolve_device", "split_logits",
]
