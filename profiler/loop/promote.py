"""The candidate's serving config, and what promotion hands the operator for vLLM and for SGLang.

The candidate is tilespec over the method whenever the vLLM adapter supports that drafter as a
``base`` (today: ``ngram``); otherwise it is vLLM's own method at a fixed K (e.g. ``eagle3`` with the
new draft at K=3), and the report says so: the A/B then measures the draft, not the policy.
"""

from __future__ import annotations

import json
import shlex

from ..errors import UsageError

TRAINED = ("eagle3", "dflash")          # methods whose draft phase 3 trains
NOTHING_TO_TRAIN = ("mtp", "ngram", "predicted_outputs")
METHODS = TRAINED + NOTHING_TO_TRAIN
DEFAULT_K = {"ngram": 4, "eagle3": 3, "dflash": 3, "mtp": 1}


def tilespec_bases() -> set[str]:
    """Drafters the installed vLLM adapter runs under ``method: tilespec`` (planned ones are rejected there)."""
    try:
        from specdec_engine.vllm.config import SUPPORTED_BASES
    except Exception:  # noqa: BLE001 - the adapter (or pydantic) missing: no tilespec candidate
        return set()
    return set(SUPPORTED_BASES)


def candidate_config(method: str, draft: str | None, k: int | None = None) -> tuple[dict, str]:
    """(``--speculative-config`` of the candidate, a note for the report)."""
    if method == "predicted_outputs":
        raise UsageError("--method predicted_outputs: vLLM has no predicted-outputs speculation to A/B here "
                         "(it is a request parameter of some hosted APIs); choose ngram for rewrite-heavy traffic")
    k = k or DEFAULT_K[method]
    if method in tilespec_bases():
        cfg = {"method": "tilespec", "base": method, "num_speculative_tokens": 8 if method == "ngram" else k}
        if method == "ngram":
            cfg.update(prompt_lookup_max=4, prompt_lookup_min=1)
        if draft:
            cfg["model"] = draft
        return cfg, f"tilespec over {method} (K chosen per request, K_max {cfg['num_speculative_tokens']})"
    cfg = {"method": method, "num_speculative_tokens": k}
    if draft:
        cfg["model"] = draft
    return cfg, (f"vLLM's {method} at a fixed K={k}: this vLLM adapter does not run tilespec over {method} yet, "
                 "so the A/B measures the new draft, not the adaptive policy")


def render(config: dict | None, target: str, draft: str | None) -> dict:
    """What the operator runs: the vLLM flag, and SGLang's launch flags for the same drafter."""
    if config is None:
        return {"vllm": f"vllm serve {shlex.quote(target)}", "vllm_speculative_config": None,
                "sglang": f"python -m sglang.launch_server --model {shlex.quote(target)}"}
    spec = json.dumps(config, separators=(",", ":"))
    method = config.get("base") if config.get("method") == "tilespec" else config.get("method")
    k = int(config.get("num_speculative_tokens", DEFAULT_K.get(method, 3)))
    sg = f"python -m sglang.launch_server --model {shlex.quote(target)}"
    if method in ("eagle3", "eagle") and draft:
        sg += (f" --speculative-algorithm TILESPEC --speculative-draft-model-path {shlex.quote(draft)}"
               f" --speculative-num-steps {k} --speculative-eagle-topk 1 --speculative-num-draft-tokens {k + 1}")
    elif method == "ngram":
        sg += f" --speculative-algorithm NGRAM --speculative-num-draft-tokens {k + 1}"
    elif method == "mtp":
        sg += f" --speculative-algorithm EAGLE --speculative-num-steps {k}  # the model's own MTP head"
    else:
        sg += f"  # no SGLang equivalent rendered for method {method!r}"
    return {"vllm": f"vllm serve {shlex.quote(target)} --speculative-config {shlex.quote(spec)}",
            "vllm_speculative_config": config, "sglang": sg}
