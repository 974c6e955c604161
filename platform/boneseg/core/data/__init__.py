"""The cohort and its derived data: synthetic and imported CT, pseudonyms, splits, 2.5-D slices, datasets."""
