"""Training: one (variant, fold) trial, augmentation, encoder pretraining."""
