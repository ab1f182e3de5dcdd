"""specdec_kernels: Triton kernels for the TileSpec policy, each with a torch reference twin.

- :func:`draft_confidence`: argmax, max probability, logsumexp (and entropy) of
  draft logits in one pass, never materialising the softmax.
- :func:`select_k`: the policy core's K selector, GPU-resident and
  graph-capturable (one launch, fixed shapes, no host sync).

Each dispatcher runs the Triton kernel on CUDA tensors and the torch twin
elsewhere; the ``*_triton`` functions also run on CPU tensors under
``TRITON_INTERPRET=1`` (how the CPU test suite covers them). No engine imports.
"""

from .confidence import draft_confidence, draft_confidence_torch, draft_confidence_triton
from .select import select_k, select_k_torch, select_k_triton

__all__ = ["draft_confidence", "draft_confidence_torch", "draft_confidence_triton",
           "select_k", "select_k_torch", "select_k_triton"]
