"""The command table: every `fewlabels` command, in one place.

Each row names the command, the module that holds its function and its config class (imported on first use, so
that `import fewlabels` stays light), its help line and its positional arguments. The CLI's parser, the Python
API's names (`fewlabels.train`, `fewlabels.TrainCommand`, ...) and the tests' walk over every option all come from
this table: adding a command touches this table and its own module only.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Command:
    name: str  # as typed: "train", or two words such as "augment preview"
    module: str  # where its function and config class live
    function: str  # the Python API name: fewlabels.<function>(**options)
    config: str  # its config class (an Options subclass): fewlabels.<config>
    help: str
    positionals: tuple[tuple[str, str, str], ...] = ()  # (option, nargs, help)
    show: str | None = None  # a function of the module that prints the returned result

    def load(self, attr: str) -> Any:
        return getattr(importlib.import_module(self.module), attr)

    @property
    def fn(self) -> Any:
        return self.load(self.function)

    @property
    def cls(self) -> Any:
        return self.load(self.config)


M = "fewlabels.methods."
COMMANDS = (
    Command("train", M + "supervised", "train", "TrainCommand", "train a classifier on the labelled images"),
    Command("evaluate", M + "supervised", "evaluate", "EvaluateCommand",
            "accuracy, per-class precision/recall/F1 and confusion matrix",
            (("model_path", "?", "run folder or checkpoint"),), "show_evaluation"),
    Command("predict", M + "supervised", "predict", "PredictCommand", "top-k classes of image files (CSV or JSON)",
            (("model_path", "?", "run folder, checkpoint or exported .onnx file"),
             ("inputs", "*", "image files or folders"))),
    Command("calibrate", M + "calibrate", "calibrate", "CalibrateCommand",
            "temperature scaling on the run's validation images: calibrated probabilities, ECE and NLL before/after",
            (("model_path", "?", "run folder of the trained model"),)),
    Command("export", M + "export", "export", "ExportCommand",
            "ONNX or TorchScript file (normalisation inside, uint8 or float input) + JSON of classes and input size",
            (("model_path", "?", "run folder or checkpoint"),)),
    Command("transfer", M + "transfer", "transfer", "TransferCommand",
            "transfer learning: linear probe on cached features, fine-tune"),
    Command("distill", M + "distill", "distill", "DistillCommand",
            "knowledge distillation: a frozen teacher teaches a student"),
    Command("pseudolabel", M + "pseudolabel", "pseudolabel", "PseudoLabelCommand",
            "label unlabelled images with a teacher (threshold, class balance)"),
    Command("selftrain", M + "selftrain", "selftrain", "SelfTrainCommand",
            "Noisy Student self-training: teacher → pseudo-labels → noised student, repeated"),
    Command("suggest", M + "suggest", "suggest", "SuggestCommand",
            "which unlabelled images to label next (margin, entropy, random, kcenter): a CSV to fill in",
            (("model_path", "?", "run folder or checkpoint of the trained model"),)),
    Command("report", M + "report", "html_report", "ReportCommand",
            "one self-contained HTML page of a run: curves, per-class scores, confusion matrix, calibration, "
            "mistakes, pseudo-labels", (("run", "?", "run folder"),)),
    Command("augment preview", M + "preview", "augment_preview", "PreviewCommand",
            "PNG grid of augmented views of a dataset"),
    Command("probe equivariance", M + "probes", "probe_equivariance", "ProbeEquivarianceCommand",
            "translation equivariance per stage, pooled-feature and prediction changes under shifts of a trained "
            "model", (("model_path", "?", "run folder or checkpoint of the trained model"),)),
    Command("probe fc-vs-cnn", M + "probes", "probe_fc_vs_cnn", "ProbeFcVsCnnCommand",
            "FC net vs CNN of matched size: standard, train-left/test-right, and pixel-permuted images"),
)
