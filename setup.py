"""Packaging hook (the metadata is in pyproject.toml): a wheel also carries the project files a user
needs outside a checkout (bonsai/shipped.py: SHIPPED), copied into bonsai/_shipped/ at build time."""

import runpy
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithProjectFiles(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout
        shipped = runpy.run_path(str(ROOT / "bonsai" / "shipped.py"))
        target = Path(self.build_lib) / "bonsai" / shipped["PACKAGED"]
        for relative in shipped["shipped_files"](ROOT):
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / relative, target / relative)


setup(cmdclass={"build_py": BuildWithProjectFiles})
