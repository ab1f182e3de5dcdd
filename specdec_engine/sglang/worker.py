"""TileSpecEagleWorker: SGLang's EAGLE V2 worker with our policy in its adaptive controller. GPU-only.

Created by the scheduler process (``TILESPEC_EAGLE3``/``TILESPEC_EAGLE`` -> ``create_worker``):

1. ``__init__``: SGLang's own init, then an ``AdaptiveController`` (SGLang's class) over a
   :class:`~specdec_engine.sglang.policy.StaticPolicy` that names our candidate step counts (the
   controller builds one runtime state per candidate while graphs are captured, before any profile
   exists);
2. ``init_cuda_graphs``: SGLang captures the draft and verify graphs of every candidate (through the
   controller), then :func:`~specdec_engine.sglang.warmup.run` loads or measures the latency model by
   replaying the captured verify graphs, and the real :class:`TileSpecAdaptivePolicy` takes the
   controller's ``params`` seat;
3. from then on SGLang calls the policy before each decode round (``activate_step_by_batch``) and after
   each verify (``on_verify_complete_cpu``), and the policy publishes ``specdec_*`` metrics from this
   process (prometheus multiprocess mode: they appear on the server's ``/metrics``).

None of this runs on the CPU test machine (no CUDA graphs); the symbols it uses are in ``compat.TOUCHES``
(tier ``worker``) and checked against the installed SGLang by the tests.
"""

from __future__ import annotations

import logging

from . import compat

logger = logging.getLogger("specdec_engine.sglang")
_CLS = None


def tilespec_worker_class():
    """The worker class (built once per process, on the installed EAGLEWorkerV2)."""
    global _CLS
    if _CLS is not None:
        return _CLS
    compat.require({"worker"})
    from sglang.srt.speculative.eagle_worker_v2 import EAGLEWorkerV2

    from .config import load_config
    from .policy import StaticPolicy
    from .runtime import SGLangRuntime

    class TileSpecEagleWorker(EAGLEWorkerV2):
        """EAGLE/EAGLE3 drafting and verification, SGLang's own; the step count per round is ours."""

        def __init__(self, server_args, *args, **kwargs):
            super().__init__(server_args, *args, **kwargs)
            cfg = load_config(getattr(server_args, "speculative_adaptive_config", None))
            self.tilespec = SGLangRuntime(cfg, server_args)
            self.adaptive_controller = None
            if getattr(self, "_hosts_draft", True):  # pipeline parallel: only the last stage drafts
                self.adaptive_controller = compat.make_adaptive_controller(self, StaticPolicy(cfg.candidate_steps))

        def init_cuda_graphs(self):
            super().init_cuda_graphs()
            if self.adaptive_controller is None:
                return
            from . import warmup

            warmup.run(self)  # never raises: on failure the static policy keeps SGLang's EAGLE behaviour
            policy = self.tilespec.make_policy(self.adaptive_controller.params, self.speculative_num_steps)
            if policy is not None:
                compat.install_policy(self.adaptive_controller, policy)

    TileSpecEagleWorker.__qualname__ = TileSpecEagleWorker.__name__
    TileSpecEagleWorker.__module__ = __name__
    _CLS = TileSpecEagleWorker
    return _CLS
