"""A small local EAGLE-3 trainer (torch, CPU-friendly) for the project's tiny target and small Llamas.

Why it exists: the model-drafter arms (eagle3 under tilespec) need a real
EAGLE-3 head to test against, and no model hub is reachable here. SpecForge
is the production trainer; this package trains the same head shape on a
laptop-sized target in minutes and exports it in the format SpecForge
exports and vLLM loads as ``{"method": "eagle3", "model": DIR}``.

Modules:
- ``model``: the head (``fc`` over 3 target layers, one decoder layer on
  concat(embeds, hidden), norm, lm_head over a draft vocabulary with
  ``d2t``/``t2d``), mirroring ``vllm/model_executor/models/llama_eagle3.py``;
- ``capture``: target hidden-state capture and the capture-correctness probe;
- ``data``: training rows (the tiny target's sample stream, or a SpecForge
  ``{"id","conversations"}`` JSONL through the chat template);
- ``trainer``: training-time-test unroll, acc_i, simulated acceptance
  length, checkpoint/resume, the non-degenerate-training gate;
- ``logs``: one record from our JSON log or SpecForge's log lines;
- ``export``: config.json + model.safetensors + manifest;
- ``tiny``: ``specdec tiny-model --eagle3`` (build or reuse by fingerprint).
"""
