"""The ``sglang.srt.plugins`` entry point ``tilespec``: makes ``--speculative-algorithm TILESPEC`` known.

SGLang calls :func:`register` in every process that calls ``load_plugins()`` (the launcher before it
parses arguments, ``Engine.__init__``, each scheduler process first thing, the detokenizer, the DP
controller). It must be cheap, idempotent and harmless for servers that never ask for TILESPEC: it
checks the light SGLang symbols (``compat``, tier ``plugin``) and registers three speculative-algorithm
names (``algorithm.py``). It patches nothing: the policy is installed by TILESPEC's own worker class.
``SGLANG_PLUGINS=tilespec`` (or a list naming it) restricts SGLang to it; unset, every installed plugin loads.

On an SGLang that lacks what tilespec needs, nothing is registered and one error line names the version
and the missing symbols; ``--speculative-algorithm TILESPEC`` then fails in SGLang's own parser
("Unknown speculative algorithm name"), after that line.
"""

from __future__ import annotations

import logging

from . import compat

logger = logging.getLogger("specdec_engine.sglang")
_registered = False


def register() -> None:
    """Entry point (``sglang.srt.plugins``)."""
    global _registered
    if _registered:
        return
    _registered = True
    problems = compat.check({"plugin"})
    if problems:
        logger.error("TileSpec: not registering --speculative-algorithm TILESPEC: tilespec supports SGLang %s, "
                     "this is %s: %s", compat.SUPPORTED, compat.sglang_version(), "; ".join(problems))
        return
    from . import algorithm

    names = algorithm.register()
    logger.debug("TileSpec: registered speculative algorithms %s", ", ".join(names))
