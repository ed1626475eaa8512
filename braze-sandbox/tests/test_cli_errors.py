"""The sandbox's own command-line errors: one line, non-zero exit, never a traceback."""

import subprocess
import sys
from urllib.parse import urlsplit

from braze_sandbox.testing import SandboxProcess


def test_port_in_use_is_one_clear_line():
    with SandboxProcess() as running:
        port = urlsplit(running.url).port
        result = subprocess.run(
            [sys.executable, "-m", "braze_sandbox", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.startswith(f"braze-sandbox: error: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr
