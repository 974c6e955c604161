"""Trained models applied to CT: fold ensembles, label maps out, DICOM-SEG."""
