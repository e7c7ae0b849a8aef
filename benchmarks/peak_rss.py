"""Peak memory of a benchmark: this (driver) process, the Spark JVM and the whole process tree."""

from __future__ import annotations

import threading

import psutil


class PeakRSS:
    """Samples RSS of this process and of its children (the Spark JVM, Python workers)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.me = psutil.Process()
        self.interval = interval
        self.driver = self.jvm = self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                mine = self.me.memory_info().rss
                jvm = total = 0
                for child in self.me.children(recursive=True):
                    try:
                        rss = child.memory_info().rss
                    except psutil.Error:
                        continue
                    total += rss
                    if "java" in child.name():
                        jvm += rss
                self.driver, self.jvm = max(self.driver, mine), max(self.jvm, jvm)
                self.total = max(self.total, mine + total)
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def python(self) -> int:
        """Peak RSS of this Python (driver) process, in bytes."""
        return self.driver

    def mib(self) -> dict[str, int]:
        return {"python_driver": self.driver >> 20, "spark_jvm": self.jvm >> 20, "process_tree": self.total >> 20}
