"""resnext: NVIDIA's ResNeXt101-32x4d ImageNet classifier family, ready to classify, train, evaluate and export."""

from .errors import DownloadError, ImageError, ResnextError, WeightsError
from .inference.predict import Predictor
from .model.factory import create_model
from .model.resnet import (
    ResNet,
    get_model_weights,
    list_models,
    resnet50,
    resnext101_32x4d,
    se_resnext101_32x4d,
)
from .model.sources import ModelSource, load_source
from .model.weights import ResNet50_Weights, ResNeXt101_32X4D_Weights, SE_ResNeXt101_32X4D_Weights, Weights
from .transforms import eval_preset, train_preset
from .version import __version__

__all__ = [
    "__version__",
    "DownloadError",
    "ImageError",
    "ModelSource",
    "Predictor",
    "ResNet",
    "ResNet50_Weights",
    "ResNeXt101_32X4D_Weights",
    "ResnextError",
    "SE_ResNeXt101_32X4D_Weights",
    "Weights",
    "WeightsError",
    "create_model",
    "eval_preset",
    "get_model_weights",
    "list_models",
    "load_source",
    "resnet50",
    "resnext101_32x4d",
    "se_resnext101_32x4d",
    "train_preset",
]
