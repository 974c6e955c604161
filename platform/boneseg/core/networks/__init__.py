"""The networks and their runtime: the timm U-Net, losses, device/AMP, the optimiser."""
