"""The SGLang adapter's engine-free parts, in the main venv (no SGLang import): config, prior, padding."""

import json

import numpy as np
import pytest

from specdec_engine.sglang.config import TileSpecConfigError, load_config, parse_config
from specdec_engine.sglang.policy import PaddedVerifyLatency, pad_batch, steps_for_plan
from specdec_engine.sglang.prior import TrainingLogError, read_training_log


def test_defaults_and_unknown_key(tmp_path):
    assert load_config(None).candidate_steps == [0, 1, 2, 3, 5, 7]
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"fallback": {"probe_intervall_steps": 3}}))
    with pytest.raises(TileSpecConfigError, match=r"unknown key 'fallback\.probe_intervall_steps'.*c\.json"):
        load_config(str(p))
    with pytest.raises(TileSpecConfigError, match=r"'acceptance_prior'"):
        parse_config({"acceptance_prior": [0.5, 1.5]})
    with pytest.raises(TileSpecConfigError, match=r"fallback probe_max_interval_steps"):
        parse_config({"fallback": {"probe_interval_steps": 500, "probe_max_interval_steps": 10}})


def test_training_log_shapes(tmp_path):
    p = tmp_path / "log.json"
    p.write_text(json.dumps([{"acc_0": 80, "acc_1": 70}]))  # percentages
    assert read_training_log(p) == [0.8, 0.7]
    p.write_text(json.dumps({"per_position_acc": [0.9, 0.5]}))
    assert read_training_log(p) == [0.9, 0.5]
    p.write_text(json.dumps({"loss": 1.0}))
    with pytest.raises(TrainingLogError, match="no per-position accuracy"):
        read_training_log(p)


def test_padding_and_step_mapping(h100_model):
    assert pad_batch(3, [1, 2, 4, 8]) == 4 and pad_batch(9, [1, 2, 4, 8]) == 9 and pad_batch(5, None) == 5
    assert steps_for_plan(np.array([0, 0]), [0, 1, 3]) == 0
    assert steps_for_plan(np.array([2, 1]), [0, 1, 3]) == 3
    assert steps_for_plan(np.zeros(0, np.int64), [1, 3]) == 1
    lat = PaddedVerifyLatency(h100_model, [0, 1, 3], cuda_graph_bs=[1, 2, 4, 8])
    cur = lat.curve(3, 12)  # 3 requests -> the graph of 4; levels 3*1, 3*2, 3*4 tokens
    assert cur[3] == pytest.approx(h100_model.predict(4, 4))
    assert cur[4] == cur[6] == pytest.approx(h100_model.predict(4, 8))
    assert cur[7] == cur[12] == pytest.approx(h100_model.predict(4, 16))
