# Databricks notebook source
# MAGIC %md
# MAGIC # gmm_fit: inspect a fit
# MAGIC For each fitted column: a histogram of a bounded sample with the fitted mixture
# MAGIC overlaid, and the kept modes with their frequency ranks and weights. Set
# MAGIC `fit_dir` to the fit's folder and `input` to the table it was fitted on.

# COMMAND ----------

from pipelines import notebook
from pipelines.gmm.fit import load_models
from pipelines.spark import get_spark

spark = get_spark()
fit_dir = notebook.param("fit_dir", "output/pipeline/gmm_fit")
input_table = notebook.param("input", "output/pipeline/ingest/bronze")
sample_rows = int(notebook.param("sample_rows", "100000"))

# COMMAND ----------

modes = notebook.gmm_modes(fit_dir)
notebook.show(modes)

# COMMAND ----------

models = load_models(fit_dir)
for column, model in sorted(models.items()):
    values = notebook.column_sample(spark, input_table, column, rows=sample_rows) if model.column_type != "categorical" else None
    notebook.show(notebook.gmm_column_figure(model, values))
