"""Package layout only (metadata is in pyproject.toml).

The shipped YAML lives in a top-level `configs/` folder (the design card's layout) and
installs as the package `llmtune.configs`, so Hydra finds it the same way in a clone, an
editable install and a wheel.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["llmtune", "llmtune.*"]), "llmtune.configs"],
    package_dir={"llmtune.configs": "configs"},
)
