"""Data layer: cohort manifests, modality readers and patient bags (their LightningDataModule is in biossl.modules)."""
