"""Helpers for the engine tests: run an offline LLM() script in a fresh interpreter, test prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

LLM_PRELUDE = textwrap.dedent('''
    import json, os, sys
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    def make_llm(model, spec=None, **kw):
        args = dict(model=model, dtype="float32", enforce_eager=True, max_model_len=1024, seed=0,
                    speculative_config=spec)
        args.update(kw)
        return LLM(**args)

    def greedy_ids(llm, prompts, max_tokens):
        sp = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
        return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, sp, use_tqdm=False)]
''')


def run_llm_script(tmp_path: Path, body: str, *args: str, timeout: int = 600) -> tuple[dict, str]:
    """Run ``body`` (after the prelude, under __main__) in a fresh interpreter; it prints RESULT <json>."""
    script = tmp_path / f"llm_{abs(hash(body)) % 10**8}.py"
    script.write_text(LLM_PRELUDE + "\nif __name__ == '__main__':\n" + textwrap.indent(textwrap.dedent(body), "    "))
    res = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "VLLM_TARGET_DEVICE": "cpu"})
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-6000:]
    lines = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    assert lines, log[-6000:]
    return json.loads(lines[-1][len("RESULT "):]), log


CODE_SNIPPETS = [
    "    def close(self):\n        if self._closed:\n            return\n        self._closed = True\n"
    "        self._sock.close()\n",
    "def read_config(path):\n    with open(path) as f:\n        data = json.load(f)\n    return data\n",
    "    for key, value in sorted(items.items()):\n        if value is None:\n            continue\n"
    "        result[key] = str(value)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n"
    "    def __repr__(self):\n        return f'Point({self.x}, {self.y})'\n",
]


def code_edit_prompts(n: int) -> list[str]:
    """Code-editing traffic: the answer should repeat much of the prompt (prompt lookup's best case)."""
    out = []
    for i in range(n):
        snip = CODE_SNIPPETS[i % len(CODE_SNIPPETS)]
        out.append(f"<|user|>\nRewrite this code:\n{snip}\n{snip}<|end|>\n<|assistant|>\n{snip[: 20 + i % 7]}")
    return out
