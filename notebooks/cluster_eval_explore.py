# Databricks notebook source
# MAGIC %md
# MAGIC # cluster_eval: explore a run
# MAGIC The metric table, each metric against k (with the k each metric picks), and the
# MAGIC recommendation. Set `output` to the run's `--output` folder. Run locally, it uses
# MAGIC `PIPELINES_NB_OUTPUT` or the default output folder.

# COMMAND ----------

from pipelines import notebook
from pipelines.spark import get_spark

spark = get_spark()
output = notebook.param("output", "output/cluster_eval")

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
