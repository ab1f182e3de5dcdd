"""`{"method": "tilespec", ...}` is validated before anything starts; vLLM's keys pass through."""

import pytest

from specdec_engine.vllm.config import TileSpecConfigError, split_speculative_config

VLLM_FIELDS = {"num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min", "model", "method",
               "num_speculative_tokens_per_batch_size"}


def test_split_passes_vllm_keys_through_and_validates_ours():
    theirs, ours = split_speculative_config(
        {"method": "tilespec", "num_speculative_tokens": 8, "prompt-lookup-max": 4, "cache_dir": "/tmp/x",
         "fallback": {"accept_floor": 0.1}}, VLLM_FIELDS)
    assert theirs == {"method": "ngram", "num_speculative_tokens": 8, "prompt_lookup_max": 4}
    assert ours.cache_dir == "/tmp/x" and ours.fallback.accept_floor == 0.1 and ours.base == "ngram"


@pytest.mark.parametrize("spec,msg", [
    ({"num_speculative_tokens": 4, "bogus_key": 1}, "unknown key 'bogus_key'"),
    ({"num_speculative_tokens": 4, "profile_budget_s": -1}, "'profile_budget_s'"),
    ({"num_speculative_tokens": 4, "fallback": {"accept_floor": 3}}, "'fallback.accept_floor'"),
    ({"num_speculative_tokens": 4, "fallback": {"nope": 3}}, "'fallback.nope'"),
    ({"num_speculative_tokens": 4, "base": "medusa"}, "'base'"),
    ({"num_speculative_tokens": 4, "depth_cost_floor": -0.1}, "'depth_cost_floor'"),
    ({"num_speculative_tokens": 4, "depth_cost_floor": "high"}, "'depth_cost_floor'"),
    ({"num_speculative_tokens": 4, "base": "mtp"}, "not supported by this version"),
    ({}, "'num_speculative_tokens' is required"),
    ({"num_speculative_tokens": 0}, "positive integer"),
    ({"num_speculative_tokens": 4, "num_speculative_tokens_per_batch_size": [[1, 8, 2]]}, "cannot be combined"),
])
def test_bad_config_names_the_key(spec, msg):
    with pytest.raises(TileSpecConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        split_speculative_config({"method": "tilespec", **spec}, VLLM_FIELDS)


def test_engine_args_rewrite_in_a_real_vllm_config(target_model, tmp_path):
    from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs

    for cls in (EngineArgs, AsyncEngineArgs):
        args = cls(model=str(target_model), dtype="float32", enforce_eager=True, max_model_len=512,
                   speculative_config={"method": "tilespec", "num_speculative_tokens": 6, "prompt_lookup_max": 3,
                                       "cache_dir": str(tmp_path)})
        cfg = args.create_engine_config()
        assert cfg.speculative_config.method == "ngram"
        assert cfg.speculative_config.num_speculative_tokens == 6
        assert cfg.additional_config["tilespec"]["cache_dir"] == str(tmp_path)
        assert cfg.scheduler_config.get_scheduler_cls().__name__ == "TileSpecScheduler"


def test_engine_args_rejects_a_bad_key_by_name(target_model):
    from vllm.engine.arg_utils import EngineArgs

    args = EngineArgs(model=str(target_model), dtype="float32", enforce_eager=True, max_model_len=512,
                      speculative_config={"method": "tilespec", "num_speculative_tokens": 4, "jump_treshold": 0.2})
    with pytest.raises(TileSpecConfigError, match="unknown key 'jump_treshold'"):
        args.create_engine_config()


def test_other_methods_are_untouched(target_model):
    from vllm.engine.arg_utils import EngineArgs

    cfg = EngineArgs(model=str(target_model), dtype="float32", enforce_eager=True, max_model_len=512,
                     speculative_config={"method": "ngram", "num_speculative_tokens": 3,
                                         "prompt_lookup_max": 3}).create_engine_config()
    assert cfg.speculative_config.method == "ngram" and "tilespec" not in (cfg.additional_config or {})
    assert cfg.scheduler_config.get_scheduler_cls().__name__ == "Scheduler"


def test_compat_check_reports_every_missing_symbol(monkeypatch):
    """A missing symbol is reported wherever it sits in the list (an earlier version stopped looking after
    the first signature it checked)."""
    from specdec_engine.vllm import compat

    gone = compat.Touch("gone", "vllm.v1.core.sched.scheduler:Scheduler.no_such_method", "WRAP", "test")
    monkeypatch.setattr(compat, "TOUCHES", compat.TOUCHES + (gone,))
    problems = compat.check()
    assert len(problems) == 1 and "no_such_method" in problems[0]


def test_compat_check_passes_on_the_installed_vllm():
    from specdec_engine.vllm import compat

    assert compat.check() == []
    assert compat.extend_scheduler_stats() is True


def test_tilespec_chooses_the_v1_runner_and_synchronous_scheduling(target_model, tmp_path, monkeypatch):
    """The policy needs real drafts and accept counts each step: V1 runner, no async scheduling (logged)."""
    from vllm.engine.arg_utils import EngineArgs

    spec = {"method": "tilespec", "num_speculative_tokens": 4, "cache_dir": str(tmp_path)}
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    cfg = EngineArgs(model=str(target_model), dtype="float32", enforce_eager=True, max_model_len=512,
                     speculative_config=dict(spec)).create_engine_config()
    import os

    assert os.environ["VLLM_USE_V2_MODEL_RUNNER"] == "0" and not cfg.use_v2_model_runner
    assert not cfg.scheduler_config.async_scheduling
    with pytest.raises(TileSpecConfigError, match="--async-scheduling"):
        EngineArgs(model=str(target_model), dtype="float32", enforce_eager=True, max_model_len=512,
                   async_scheduling=True, speculative_config=dict(spec)).create_engine_config()
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    with pytest.raises(TileSpecConfigError, match="VLLM_USE_V2_MODEL_RUNNER=1"):
        EngineArgs(model=str(target_model), dtype="float32", enforce_eager=True, max_model_len=512,
                   speculative_config=dict(spec)).create_engine_config()
