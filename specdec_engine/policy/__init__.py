"""Engine-agnostic TileSpec core: latency model, calibration, K selection, fallback.

Nothing here imports an engine; adapters translate engine state into these
calls (see ``specdec_engine.vllm`` and ``specdec_engine.sglang``).
"""

from .calibration import Calibration, CalibrationError
from .depth import ConfidenceExtrapolator, ProposalDepth
from .history import AcceptanceHistory
from .fallback import FallbackConfig, FallbackController, SpecState
from .latency_model import DEFAULT_JUMP_THRESHOLD, LatencyModel, LatencyModelError, Segments, fit_segments
from .policy import PolicyStats, StepPlan, TileSpecPolicy
from .selector import KSelector, RateTracker, Selection

__all__ = [
    "AcceptanceHistory",
    "Calibration", "CalibrationError", "ConfidenceExtrapolator",
    "ProposalDepth", "FallbackConfig", "FallbackController", "SpecState",
    "DEFAULT_JUMP_THRESHOLD", "LatencyModel", "LatencyModelError", "Segments", "fit_segments",
    "PolicyStats", "StepPlan", "TileSpecPolicy", "KSelector", "RateTracker", "Selection",
]
