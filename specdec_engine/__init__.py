"""specdec-engine: adaptive speculative decoding for vLLM and SGLang (TileSpec policy)."""

__version__ = "0.1.0"
