import json
import subprocess
import sys

import pytest


def specdec(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "specdec_profiler.cli", *args], capture_output=True, text=True,
                          cwd=cwd)


def test_fit_reproduces_the_h100_table(tmp_path, h100_csv):
    out = specdec("tiles", "fit", "--csv", str(h100_csv), "--tokens-col", "N", "--latency-col", "graph_full_fa_ms",
                  "--batch-col", "B", "--out", str(tmp_path / "fit"))
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["n_points"] == 72 and res["mape"] < 3.0 and isinstance(res["boundaries"], list)
    for f in ("latency_model.npz", "meta.json", "plots/latency_model.png", "plots/token_distribution.png"):
        assert (tmp_path / "fit" / f).is_file()


def test_fit_without_batch_column_and_custom_threshold(tmp_path, h100_csv):
    # a single-batch sweep as an operator would record it: no batch column at all
    rows = h100_csv.read_text().splitlines()
    head = rows[0].split(",")
    b, n, lat = head.index("B"), head.index("N"), head.index("eager_dev_ms")
    single = ["N,ms"] + [f"{r.split(',')[n]},{r.split(',')[lat]}" for r in rows[1:] if r.split(",")[b] == "1"]
    csv = tmp_path / "b1.csv"
    csv.write_text("\n".join(single) + "\n")
    out = specdec("tiles", "fit", "--csv", str(csv), "--tokens-col", "N", "--latency-col", "ms",
                  "--jump-threshold", "0.05", "--out", str(tmp_path / "fit"))
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.splitlines()[-1])
    assert res["batch_sizes"] == [1] and res["n_points"] == len(single) - 1 and res["mape"] < 3.0


CSV_CASES = {
    "empty": ("", "empty CSV"),
    "header_only": ("B,N,ms\n", "no data rows"),
    "missing_column": ("B,N,lat\n1,1,1.0\n1,2,1.1\n", "column 'ms' (--latency-col) not found"),
    "nan": ("B,N,ms\n1,1,1.0\n1,2,nan\n", ":3: column 'ms' is nan"),
    "negative": ("B,N,ms\n1,1,1.0\n1,2,-0.5\n", ":3: column 'ms' must be a positive latency"),
    "text": ("B,N,ms\n1,1,1.0\n1,two,1.5\n", ":3: column 'N' is not a number"),
    "one_point": ("B,N,ms\n1,4,1.0\n", "at least 2 distinct values"),
    "tokens_below_batch": ("B,N,ms\n8,4,1.0\n8,16,1.2\n", "below B=8"),
}


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_bad_input_is_one_line_exit_2(tmp_path, case):
    text, msg = CSV_CASES[case]
    p = tmp_path / f"{case}.csv"
    p.write_text(text)
    out = specdec("tiles", "fit", "--csv", str(p), "--tokens-col", "N", "--latency-col", "ms", "--batch-col", "B",
                  "--out", str(tmp_path / "o"))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("specdec: error: ") and msg in lines[0], out.stderr


def test_missing_file_is_named(tmp_path):
    out = specdec("tiles", "fit", "--csv", str(tmp_path / "nope.csv"), "--tokens-col", "N", "--latency-col", "ms",
                  "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and "nope.csv: no such file" in out.stderr


def test_cache_cli_lists_and_validates(tmp_path, h100_model):
    from specdec_engine.cache import CacheKey, ProfileCache

    d = ProfileCache(tmp_path).save(CacheKey("tiny", "cpu"), h100_model, plots=False)
    out = specdec("cache", "--cache-dir", str(tmp_path), "list")
    assert out.returncode == 0 and d.name in out.stdout
    assert specdec("cache", "--cache-dir", str(tmp_path), "validate").returncode == 0
    (d / "latency_model.npz").write_bytes(b"x")
    out = specdec("cache", "--cache-dir", str(tmp_path), "validate")
    assert out.returncode == 1 and "sha256 mismatch" in out.stdout
    assert specdec("cache", "--cache-dir", str(tmp_path), "clear").returncode == 2
    assert specdec("cache", "--cache-dir", str(tmp_path), "clear", "--all").returncode == 0
    assert not d.exists()
