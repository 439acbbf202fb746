"""What a model is: a pretrained backbone plus a classification head and a box head (torch).

- ``clsloc.models.backbones``  pretrained ImageNet trunks loaded offline (EfficientNet-Lite0/1/2, torchvision)
- ``clsloc.models.heads``      classification head, box regression head (map or pooled, agnostic or per-class)
- ``clsloc.models.network``    ClsLocNet, ``build_model``, ``select_boxes``, the ONNX ``ExportWrapper``
- ``clsloc.models.frozen``     frozen BatchNorm folded into the convs: the frozen trunk's inference snapshot, the
                        fine-tuned top's training view
"""

from clsloc.models.backbones import BACKBONES, BackboneError, get_backbone
from clsloc.models.network import ClsLocNet, ExportWrapper, build_model, select_boxes

__all__ = ["BACKBONES", "BackboneError", "ClsLocNet", "ExportWrapper", "build_model", "get_backbone", "select_boxes"]
