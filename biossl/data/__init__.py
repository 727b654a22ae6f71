"""Data layer: cohort manifests, modality readers, patient bags and the DataModule."""
