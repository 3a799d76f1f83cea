"""Maps the top-level folders onto the ``edgekit`` namespace.

host/ -> edgekit.host (workstation, needs torch), device/ -> edgekit.device (the
board: Python 3.8, no torch), calibration/ -> edgekit.calibration (shared by
both), contract/ -> edgekit.contract (the host/device contract: both,
Python 3.8, stdlib only), profiles/ -> edgekit.profiles (target data files). ``edgekit`` itself is
an implicit namespace package. Everything else lives in setup.cfg.
"""
from setuptools import find_packages, setup

ROOTS = {
    "host": "edgekit.host",
    "device": "edgekit.device",
    "calibration": "edgekit.calibration",
    "profiles": "edgekit.profiles",
    "contract": "edgekit.contract",
}

packages = []
package_dir = {}
for folder, name in ROOTS.items():
    packages.append(name)
    package_dir[name] = folder
    packages.extend("%s.%s" % (name, sub) for sub in find_packages(folder))

setup(packages=packages, package_dir=package_dir)
