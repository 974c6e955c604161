"""Clinical image I/O: NIfTI and DICOM CT read with every header checked before data."""
