"""specdec_kernels: Triton kernels for the TileSpec policy, each with a torch reference twin.

Imports no engine. Kernels land with the kernels issue; until then the
policy core runs on the CPU (numpy) path only.
"""
