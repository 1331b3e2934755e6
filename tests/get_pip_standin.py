"""Offline stand-in for the get-pip script ansible-test downloads to bootstrap its venvs.

ansible-test runs it with the venv's Python; it bootstraps pip from the interpreter's own
ensurepip and then installs the requested pip version from the configured package index.
"""
import ensurepip
import os
import subprocess
import sys

env = dict(os.environ)  # ensurepip blanks PIP_CONFIG_FILE; keep the machine's pip config for the second step
ensurepip.bootstrap(upgrade=True)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "-q"] + args, env=env))
