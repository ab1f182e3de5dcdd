"""tilespec inside the real engine (offline LLM): lossless greedy output, profiling and its cache."""

import json
import shutil

from vllm_engine_helpers import code_edit_prompts, run_llm_script


def _prompts():
    long = "".join(f"    value_{i} = compute(value_{i - 1}, {i})\n" for i in range(1, 60))
    return code_edit_prompts(8) + [
        "def fibonacci(n):\n",
        "import os\nimport sys\n\nclass ",
        "<|user|>\nContinue this code:\n" + long + "<|end|>\n<|assistant|>\n",  # ~700-token prompt
        long,
    ] + [f"def function_{i}(arg):\n    " for i in range(8)]


EQUALITY = '''
target, cache, name = sys.argv[1], sys.argv[2], sys.argv[3]
prompts = json.loads(sys.argv[4])
configs = {
    "plain": None,
    "ngram_k4": {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2},
    "tilespec_k4": {"method": "tilespec", "num_speculative_tokens": 4, "prompt_lookup_max": 4,
                    "prompt_lookup_min": 2, "cache_dir": cache},
    "tilespec_k8": {"method": "tilespec", "num_speculative_tokens": 8, "prompt_lookup_max": 4,
                    "prompt_lookup_min": 1, "cache_dir": cache},
}
llm = make_llm(target, configs[name])
print("RESULT " + json.dumps(greedy_ids(llm, prompts, 48)))
'''


def test_greedy_output_with_tilespec_equals_no_speculation(target_model, tmp_path):
    # one engine per interpreter: vLLM 0.32 cannot build a second speculative engine in one process
    prompts = _prompts()
    out, logs = {}, {}
    for name in ("plain", "ngram_k4", "tilespec_k4", "tilespec_k8"):
        out[name], logs[name] = run_llm_script(tmp_path, EQUALITY, str(target_model), str(tmp_path / "cache"), name,
                                               json.dumps(prompts))
    assert "TileSpec: scheduler active" in logs["tilespec_k4"] and "TileSpec: scheduler active" in logs["tilespec_k8"]
    for name in ("ngram_k4", "tilespec_k4", "tilespec_k8"):
        for i, (a, b) in enumerate(zip(out["plain"], out[name])):
            assert a == b, f"{name}: prompt {i} differs from plain decoding at token " \
                           f"{next(j for j, (x, y) in enumerate(zip(a, b)) if x != y)}"
    assert all(len(t) == 48 for t in out["plain"]) and len(out["plain"]) == len(prompts)


ONE_START = '''
target, cache = sys.argv[1], sys.argv[2]
llm = make_llm(target, {"method": "tilespec", "num_speculative_tokens": 4, "prompt_lookup_max": 4,
                        "cache_dir": cache, "profile_batch_sizes": [1, 2, 4, 8]})
print("RESULT " + json.dumps(greedy_ids(llm, ["def f(x):\\n", "import os\\n"], 16)))
'''


def test_profile_cache_is_reused_and_a_corrupt_one_is_moved_aside(target_model, tmp_path):
    cache = tmp_path / "cache"
    first, log = run_llm_script(tmp_path, ONE_START, str(target_model), str(cache))
    assert "TileSpec: profiling the verify forward" in log and "TileSpec: profiled" in log
    (d,) = [p for p in cache.iterdir() if p.is_dir()]
    meta = json.loads((d / "meta.json").read_text())
    assert meta["key"]["engine"] == "vllm" and meta["grid"]["batch_sizes"] == [1, 2, 4, 8]
    assert (d / "plots" / "latency_model.png").is_file()

    second, log = run_llm_script(tmp_path, ONE_START, str(target_model), str(cache))
    assert "TileSpec: already profiled, skipping" in log and "profiling the verify forward" not in log
    assert second == first

    (d / "latency_model.npz").write_bytes(b"not an npz")
    third, log = run_llm_script(tmp_path, ONE_START, str(target_model), str(cache))
    assert "moved aside" in log and "TileSpec: profiled" in log
    assert third == first
    assert any(".corrupt-" in p.name for p in cache.iterdir())
    assert json.loads((d / "meta.json").read_text())["files"]["latency_model.npz"]


def test_unwritable_cache_dir_degrades_to_memory(target_model, tmp_path):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    out, log = run_llm_script(tmp_path, ONE_START, str(target_model), str(blocker / "cache"))
    assert "not writable" in log and "keeping profiles in memory only" in log
    assert "TileSpec: scheduler active" in log and len(out[0]) == 16
    shutil.rmtree(tmp_path / "unused", ignore_errors=True)
