"""Children that die with their parent: a SIGKILLed loop or test must not leave a trainer or a server behind.

``start_new_session`` puts a child in its own process group (so that stopping it stops its
workers), which also means the kernel will not signal it when the loop dies. On Linux,
``PR_SET_PDEATHSIG`` asks for SIGTERM to the child when its parent goes away: a resumed loop
then never finds an orphaned trainer still writing into the phase folder it is about to redo.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def new_session_dying_with_parent() -> None:
    """``preexec_fn`` for ``subprocess.Popen``: own session, SIGTERM when the parent dies (Linux)."""
    os.setsid()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass
