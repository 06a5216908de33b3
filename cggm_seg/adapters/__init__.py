"""Task adapters: loaders in the public formats for CMU-MOSI, IEMOCAP and UPMC-Food-101."""
