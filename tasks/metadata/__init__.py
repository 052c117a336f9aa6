"""Tasks of the metadata collectors: window and HWM, extractors, masking, extract files, landing."""
