"""Old import path of the baseline handlers, kept for one release: use :mod:`cggm_seg.modulation`."""

from cggm_seg.modulation import MSLRHandler, OGMGEHandler, UnimodalHandler, keep_only_modality

__all__ = ["MSLRHandler", "OGMGEHandler", "UnimodalHandler", "keep_only_modality"]
