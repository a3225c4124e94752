"""The observer's import cost, in a fresh interpreter (start-up budget, DESIGN.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_observer_import_pulls_no_heavy_module():
    """Importing the observer loads none of the slow stdlib modules (start-up budget)."""
    code = ("import sys, supervise_smtp.observer; "
            "print(' '.join(sorted({'dataclasses', 'enum', 'typing', 're', 'collections', "
            "'base64', 'logging'} & set(sys.modules))))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(Path(__file__).parents[2]))
    assert out.stdout.strip() == ""
