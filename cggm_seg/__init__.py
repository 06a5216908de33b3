"""cggm_seg: Classifier-Guided Gradient Modulation for multimodal MONAI training."""

__version__ = "0.6.0"
