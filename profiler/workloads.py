"""Benchmark workloads built from this Python's standard library (deterministic for a seed).

- ``code_edit``: "Rewrite this code:" + a real stdlib function, with the
  answer started: the answer repeats much of the prompt, prompt lookup's best
  case (and the shape of real code-editing traffic). Served greedy.
- ``open_gen``: "Write ..." requests with no code to copy, served with
  sampling (temperature 1.0), where prompt lookup rarely matches.
"""

from __future__ import annotations

import ast
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path

_TASKS = [
    "parses a date string", "merges two sorted lists", "counts words in a file", "retries a network call",
    "validates an email address", "flattens a nested dictionary", "computes a moving average",
    "reads a CSV file into dictionaries", "caches the results of a function", "walks a directory tree",
    "formats a table of numbers", "checks whether a number is prime", "converts Celsius to Fahrenheit",
    "deduplicates a list while keeping order", "splits a string into chunks", "compresses a file with gzip",
]


@dataclass(frozen=True)
class Workload:
    name: str
    prompts: list
    temperature: float
    description: str


def _functions(max_files: int = 400, seed: int = 0) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py"))[:max_files]
    out = []
    for p in files:
        try:
            src = p.read_text(encoding="utf-8")
            tree = ast.parse(src)
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        lines = src.splitlines()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.end_lineno:
                n = node.end_lineno - node.lineno + 1
                if 5 <= n <= 14:
                    body = "\n".join(lines[node.lineno - 1:node.end_lineno])
                    if len(body) < 700 and "\t" not in body:
                        out.append(body)
    random.Random(seed).shuffle(out)
    return out


def code_edit(n: int, seed: int = 0) -> Workload:
    funcs = _functions(seed=seed)
    if not funcs:
        raise RuntimeError("no standard-library functions found for the code_edit workload")
    prompts = []
    for i in range(n):
        f = funcs[i % len(funcs)]
        first = f.splitlines()[0]
        prompts.append(f"<|user|>\nRewrite this code:\n{f}\n<|end|>\n<|assistant|>\n{first}\n")
    return Workload("code_edit", prompts, 0.0, "rewrite a stdlib function (answer repeats the prompt), greedy")


def open_gen(n: int, seed: int = 0) -> Workload:
    rng = random.Random(seed + 1)
    prompts = [f"<|user|>\nWrite a Python function that {rng.choice(_TASKS)}.<|end|>\n<|assistant|>\n"
               for _ in range(n)]
    return Workload("open_gen", prompts, 1.0, "write new code from a one-line request, temperature 1.0")


WORKLOADS = {"code_edit": code_edit, "open_gen": open_gen}


def make(name: str, n: int, seed: int = 0) -> Workload:
    try:
        return WORKLOADS[name](n, seed)
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}") from None
