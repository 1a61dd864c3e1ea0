"""The optional compiled walk (kdshell/memory/_walk.c): built when a C compiler is there; without
one the install goes on and kdshell uses the Python walk (the project's metadata is pyproject.toml)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("kdshell.memory._walk", ["kdshell/memory/_walk.c"], optional=True)])
