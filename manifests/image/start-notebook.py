#!/opt/venv/bin/python
# Installed by the guardlab pod image recipe (manifests/image/recipe.yaml) as
# /usr/local/bin/start-notebook.py, the entry point the Jupyter Docker Stacks images have.
#
# Starts the Jupyter server on 0.0.0.0:8888 (inside the pod's own network namespace) from the
# user's home and passes every argument through, so that the Deployment's
# `start-notebook.py --IdentityProvider.token= --ServerApp.password=` turns the token off. A
# default is left out when the arguments set it themselves (Jupyter refuses a setting given
# twice), so a caller can still choose the address or the port.
#
# DOCKER_STACKS_JUPYTER_CMD picks the front end as in the Docker Stacks (`notebook` when the
# notebook package is installed, else `server`).

import os
import shutil
import sys

home = os.environ.get("HOME") or "/home/jovyan"
command = os.environ.get("DOCKER_STACKS_JUPYTER_CMD") or (
    "notebook" if shutil.which("jupyter-notebook") else "server"
)

defaults = {
    "ip": "0.0.0.0",
    "port": "8888",
    "open_browser": "False",
    "root_dir": home,
}


def given(name):
    """Whether the arguments set ServerApp.<name> (or its short alias --<name>)."""
    spellings = (f"--ServerApp.{name}", f"--{name}", f"--{name.replace('_', '-')}")
    return any(a == s or a.startswith(s + "=") for a in sys.argv[1:] for s in spellings)


argv = ["jupyter", command]
argv += [f"--ServerApp.{k}={v}" for k, v in defaults.items() if not given(k)]
argv += sys.argv[1:]

os.chdir(home)
sys.stdout.flush()
os.execvp(argv[0], argv)
