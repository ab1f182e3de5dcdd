from prometheus_client import CollectorRegistry, generate_latest

from specdec_engine.metrics import SpecdecMetrics
from specdec_engine.policy import PolicyStats


def _value(reg, name, labels):
    return reg.get_sample_value(name, labels)


def test_record_exports_every_documented_metric():
    reg = CollectorRegistry()
    m = SpecdecMetrics(k_max=4, registry=reg, labelnames=("model_name",), labelvalues=("tiny",))
    st = PolicyStats(4)
    st.steps, st.steps_spec_off, st.drafts, st.draft_tokens, st.accepted_tokens = 10, 3, 12, 30, 17
    st.accepted_per_pos = [9, 5, 2, 1]
    st.chosen_k = [5, 4, 3, 2, 6]
    st.timed_steps, st.timed_predicted_ms, st.timed_measured_ms = 7, 70.0, 77.0
    st.fallback_state, st.calibration_ece, st.calibration_pairs = 2, 0.031, 400
    m.record(st.to_dict())
    lab = {"model_name": "tiny"}
    assert _value(reg, "specdec_steps_total", lab) == 10
    assert _value(reg, "specdec_steps_spec_off_total", lab) == 3
    assert _value(reg, "specdec_drafts_total", lab) == 12
    assert _value(reg, "specdec_draft_tokens_total", lab) == 30
    assert _value(reg, "specdec_accepted_tokens_total", lab) == 17
    assert _value(reg, "specdec_accepted_tokens_per_pos_total", {**lab, "position": "1"}) == 5
    assert _value(reg, "specdec_chosen_k_count", lab) == 20
    assert _value(reg, "specdec_chosen_k_bucket", {**lab, "le": "0.0"}) == 5
    assert _value(reg, "specdec_chosen_k_bucket", {**lab, "le": "2.0"}) == 12
    assert _value(reg, "specdec_chosen_k_sum", lab) == 4 + 6 + 6 + 24
    assert _value(reg, "specdec_fallback_state", lab) == 2
    assert _value(reg, "specdec_step_measured_ms_total", lab) == 77.0
    assert _value(reg, "specdec_calibration_ece", lab) == 0.031
    text = generate_latest(reg).decode()
    assert "vllm:" not in text and "specdec_timed_steps_total" in text


def test_bulk_histogram_equals_one_by_one():
    reg1, reg2 = CollectorRegistry(), CollectorRegistry()
    a = SpecdecMetrics(8, registry=reg1)
    b = SpecdecMetrics(8, registry=reg2)
    a.record({"chosen_k": [3, 0, 7, 0, 0, 0, 0, 0, 1]})
    for k, c in enumerate([3, 0, 7, 0, 0, 0, 0, 0, 1]):
        for _ in range(c):
            b.chosen_k.observe(k)
    def samples(reg):
        return [line for line in generate_latest(reg).decode().splitlines() if "_created" not in line]

    assert samples(reg1) == samples(reg2)
