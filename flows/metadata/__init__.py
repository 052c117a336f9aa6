"""The metadata collection flow: one source's metadata to the catalog's landing directory, then the HWM."""
