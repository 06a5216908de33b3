"""Network definitions: the 3D multimodal U-Net and the sequence/feature networks."""

from cggm_seg.networks.heads import ModalityHeads, segmentation_heads
from cggm_seg.networks.unet3d import MultiModalUNet3D

__all__ = ["ModalityHeads", "MultiModalUNet3D", "segmentation_heads"]
