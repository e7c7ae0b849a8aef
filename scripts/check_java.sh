#!/usr/bin/env bash
# Stops with one line when Java is missing or older than 17 (Spark 4 needs Java 17+).
set -u
java_bin="${JAVA_HOME:+$JAVA_HOME/bin/}java"
if ! command -v "$java_bin" >/dev/null 2>&1; then
  echo "error: Java 17+ is required (Spark 4), but no 'java' was found on PATH or in JAVA_HOME" >&2
  exit 2
fi
version=$("$java_bin" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
major=${version%%.*}
[ "$major" = "1" ] && major=$(echo "$version" | cut -d. -f2)
if ! [ "$major" -ge 17 ] 2>/dev/null; then
  echo "error: Java 17+ is required (Spark 4), but '$java_bin' is version ${version:-unknown}" >&2
  exit 2
fi
