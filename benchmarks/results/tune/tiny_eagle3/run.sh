#!/usr/bin/env bash
cd /work/main
T=$(.venv/bin/specdec tiny-model | tail -1)
time .venv/bin/specdec tune --space examples/tune-space.tiny-eagle3.json --strategy hyperband --runner local-eagle3 \
  --target "$T" --corpus /tmp/tune/corpus.jsonl --ledger /tmp/tune/ledger.jsonl --out /tmp/tune/result.json
echo rc=$?
