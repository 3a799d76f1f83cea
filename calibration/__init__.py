"""edgekit.calibration: image discovery, preprocessing and calibration readers.

Shared by host and device so both preprocess images identically. Python >= 3.8,
no torch.
"""
