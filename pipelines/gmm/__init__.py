"""GMM mode-specific normalisation (CTGAN / CTAB-GAN / RDT ClusterBasedNormalizer) at Spark scale."""
