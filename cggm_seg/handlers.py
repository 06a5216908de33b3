"""Old import path of the modulation handlers, kept for one release: use :mod:`cggm_seg.modulation`."""

from cggm_seg.modulation import CGGMHandler, ClipGradNorm, HeadMonitor, modulation_scalars

__all__ = ["CGGMHandler", "ClipGradNorm", "HeadMonitor", "modulation_scalars"]
