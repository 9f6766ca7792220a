"""Packages of the wheel: ``lit_factory*`` plus the top-level ``templates/`` and ``recipes/`` folders, shipped as
``lit_factory.templates`` and ``lit_factory.recipes`` (mapped in pyproject.toml). Here rather than in pyproject.toml
because ``[tool.setuptools.packages.find]`` cannot add mapped folders to what it finds."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["lit_factory*"]), "lit_factory.templates", "lit_factory.recipes"])
