"""Dataset preparation: datalists from real dataset folders and synthetic data in the real formats."""
