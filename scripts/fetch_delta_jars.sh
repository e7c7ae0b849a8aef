#!/usr/bin/env bash
# Fetch Spark's Delta jars for the pinned pyspark + delta-spark pair (constraints.txt) with the
# machine's Maven, into .jars/delta/ (git-ignored). Sessions built by pipelines.spark.get_spark
# (and `make run` / `make test`) then run on native Delta. Jars Spark already ships (jackson,
# hadoop, parquet, scala-library, ...) are left out: Spark's own copies win on the classpath.
# Without Maven or a network this prints one line and exits 0: everything runs on delta-rs.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=.jars/delta
pin() { sed -n "s/^$1==//p" constraints.txt; }
spark_version=$(pin pyspark)
delta_version=$(pin delta_spark)
artifact="delta-spark_${spark_version%.*}_2.13"
stamp="$OUT/.$artifact-$delta_version"
[ -f "$stamp" ] && exit 0

if ! command -v mvn >/dev/null 2>&1; then
  echo "Delta jars not fetched (no mvn on PATH): Delta runs on delta-rs" >&2
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! mvn -q -B -f scripts/delta-jars/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
     -Ddelta.artifact="$artifact" -Ddelta.version="$delta_version" -DoutputDirectory="$tmp/jars" >"$tmp/log" 2>&1; then
  echo "Delta jars not fetched (Maven could not resolve io.delta:$artifact:$delta_version, see 'mvn' output with -X): Delta runs on delta-rs" >&2
  exit 0
fi
spark_jars=$("$PY" -c "import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), 'jars'))")
rm -rf "$OUT" && mkdir -p "$OUT"
for jar in "$tmp"/jars/*.jar; do
  name=$(basename "$jar")
  base=$(echo "$name" | sed -E 's/-[0-9][^-]*(-[0-9]+)?\.jar$//')
  compgen -G "$spark_jars/$base-[0-9]*.jar" >/dev/null || cp "$jar" "$OUT/"
done
touch "$stamp"
echo "Delta jars io.delta:$artifact:$delta_version fetched into $OUT ($(ls "$OUT"/*.jar | wc -l) jars, $(du -sh "$OUT" | cut -f1))" >&2
