"""Import ``spaces_demo/app.py`` (a Space's app file, not a package module) for the tests."""

from __future__ import annotations

import importlib.util
import sys

from tests.helpers import REPO_ROOT

APP_FILE = REPO_ROOT / "spaces_demo" / "app.py"


def load_app():
    name = "hf_lowdata_spaces_demo_app"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, APP_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
