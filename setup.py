"""The job files (``jobs/*.py``) ship inside the wheel as ``pipelines.jobs``, so the
``[project.scripts]`` entry points and a Databricks ``python_wheel_task`` can name them
while ``spark-submit jobs/<job>.py`` keeps working from a checkout. Everything else is
in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["pipelines*"]), "pipelines.jobs"],
    package_dir={"pipelines.jobs": "jobs"},
)
