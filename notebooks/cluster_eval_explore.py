# Databricks notebook source
# MAGIC %md
# MAGIC # cluster_eval: explore a run
# MAGIC The metric table, each metric against k (with the k each metric picks), and the
# MAGIC recommendation. Interactive only. `output` is the run's `--output` folder and `tables`
# MAGIC its `--tables` namespace (defaults: the prod target's Volume and schema; for a dev run
# MAGIC `/Volumes/main/<you>/files/cluster_eval` and `main.<you>`). Run locally, it uses
# MAGIC `PIPELINES_NB_OUTPUT` / `PIPELINES_NB_TABLES` or the local config.

# COMMAND ----------

from pipelines import notebook
from pipelines.spark import get_spark

spark = get_spark()
cfg = notebook.config()
output = notebook.param("output", cfg.cluster_eval.output)
notebook.use_tables(cfg, output)

# COMMAND ----------

summary = notebook.cluster_eval_summary(output)
print("best k per metric:", summary["best_k"])
print("recommended k:", summary["recommended_k"])
print(summary["explanation"])

# COMMAND ----------

metrics = notebook.cluster_eval_metrics(output)
notebook.show(metrics.select("k", "inertia", "calinski_harabasz", "davies_bouldin", "silhouette_spark", "silhouette_sample", "bic", "gap"))

# COMMAND ----------

for plot in notebook.cluster_eval_plots(output):
    notebook.show(plot)
