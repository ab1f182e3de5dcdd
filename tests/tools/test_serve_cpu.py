"""benchmarks/serve_cpu.py: bad arguments stop it before any server starts; the /proc reader sees this process."""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import serve_cpu  # noqa: E402


def test_an_unknown_arm_is_named_and_nothing_starts(tmp_path, capsys):
    assert serve_cpu.main(["--arms", "no_spec,ngram_k3", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "ngram_k3" in err and "ngram_k2" in err  # the bad name, and what to choose from
    assert not (tmp_path / "out").exists()


def test_bad_counts_are_refused(tmp_path, capsys):
    assert serve_cpu.main(["--trials", "0", "--out", str(tmp_path / "out")]) == 2
    assert "--trials" in capsys.readouterr().err


def test_thread_cpu_of_a_process_group_includes_this_thread():
    cpu = serve_cpu.thread_cpu_s(os.getpgid(0))
    mine = [v for (proc, tid, name), v in cpu.items() if tid == str(os.getpid())]
    assert mine and all(v >= 0 for v in cpu.values())
