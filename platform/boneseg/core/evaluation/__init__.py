"""Scoring: per-case 3-D Dice, validation of a fold, statistics across variants."""
