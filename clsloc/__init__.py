"""clsloc core: the contracts shared by training and serving.

Torch-free on purpose: the service, the batch job and the client import this
package without pulling in PyTorch. One definition of each contract lives here:

- ``clsloc.boxes``       box formats, conversions, clipping, IoU
- ``clsloc.images``      bytes / path / file -> RGB uint8, EXIF applied, bad input refused
- ``clsloc.preprocess``  resize + normalization, read from a model's manifest
- ``clsloc.manifest``    the exported model's manifest (what serving trusts)
- ``clsloc.datasets``    VOC / COCO / YOLO / CSV readers, splits, data check
- ``clsloc.metrics``     accuracy, mean IoU, localization accuracy, confusion matrix
- ``clsloc.synth``       deterministic synthetic dataset for tests and the default model
"""

__version__ = "0.1.0"
