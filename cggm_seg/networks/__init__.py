"""Network definitions: the 3D multimodal U-Net and the sequence/feature networks."""
