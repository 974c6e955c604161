"""The labelling half: threshold labels, the V-Net's proposals, corrections, effort."""
