"""Scores: BraTS region Dice/HD95, CGGM utilisation metrics, and the sequence tasks' metrics."""
