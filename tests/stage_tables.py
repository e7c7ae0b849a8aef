"""The Delta tables each job writes under its output root (``--output`` / ``--fit-dir``).

The bundle test orders tasks by these; the native-Delta test checks that a pipeline run
with a table namespace writes exactly these as named tables.
"""

OUTPUT_TABLES = {
    "ingest": ("bronze", "quarantine", "_ingested_files"),
    "gmm_fit": ("models", "fit_status"),
    "gmm_transform": ("transformed_values", "feature_values"),
    "tokenize": ("tokenizer", "tokens"),
    "cluster_eval": ("metrics", "centers", "assignments"),
    "drift": ("drift",),
}
