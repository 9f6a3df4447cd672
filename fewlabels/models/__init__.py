"""Model registry: `create_model(name, num_classes, ...)` for the compact CNNs (cnn-tiny … cnn-xl), the MLP
baseline (mlp), the CIFAR ResNets (resnet20 … resnet56, with pretrained weights) and any timm model
(`timm:<name>`); `load_pretrained` for weights from files. Every model has the interface of `FewLabelsModel`:
forward_features / forward_head / feature_stages / get_classifier / reset_classifier / head_prefixes /
param_depths / num_features."""

from . import cnn, mlp, resnet_cifar  # noqa: F401  (importing registers the models)
from .base import DropPath, FewLabelsModel
from .loading import LoadReport, load_pretrained, read_state_dict
from .mlp import mlp_width_for_params
from .registry import create_model, list_models, register_model, weights_dirs

__all__ = [
    "DropPath",
    "FewLabelsModel",
    "LoadReport",
    "create_model",
    "list_models",
    "load_pretrained",
    "mlp_width_for_params",
    "read_state_dict",
    "register_model",
    "weights_dirs",
]
