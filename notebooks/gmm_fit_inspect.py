# Databricks notebook source
# MAGIC %md
# MAGIC # gmm_fit: inspect a fit
# MAGIC For each fitted column: a histogram of a bounded sample with the fitted mixture
# MAGIC overlaid, and the kept modes with their frequency ranks and weights. Interactive only.
# MAGIC `fit_dir` is the fit's folder, `input` the table it was fitted on and `tables` the
# MAGIC runs' `--tables` namespace (defaults: the prod target's; see cluster_eval_explore).

# COMMAND ----------

from pipelines import notebook
from pipelines.gmm.fit import load_models
from pipelines.spark import get_spark

spark = get_spark()
cfg = notebook.config()
fit_dir = notebook.param("fit_dir", cfg.gmm_fit.fit_dir)
input_table = notebook.param("input", f"{cfg.ingest.output}/bronze")
notebook.use_tables(cfg, fit_dir, cfg.ingest.output)
sample_rows = int(notebook.param("sample_rows", "100000"))

# COMMAND ----------

modes = notebook.gmm_modes(fit_dir)
notebook.show(modes)

# COMMAND ----------

models = load_models(fit_dir)
for column, model in sorted(models.items()):
    values = notebook.column_sample(spark, input_table, column, rows=sample_rows) if model.column_type != "categorical" else None
    notebook.show(notebook.gmm_column_figure(model, values))
