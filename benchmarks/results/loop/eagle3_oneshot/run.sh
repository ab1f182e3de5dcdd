#!/usr/bin/env bash
# the eagle3 oneshot loop demo: killed during training, then resumed
cd /tmp/loopdemo
T=$(/work/main/.venv/bin/specdec tiny-model | tail -1)
ARGS=(--target "$T" --served local --standing-config none --profile access.jsonl --method eagle3 --workdir w
      --ab-trials 3 --ab-requests 12 --ab-concurrency 4 --ab-max-tokens 64 --ab-max-model-len 2048)
/work/main/.venv/bin/specdec loop "${ARGS[@]}" > run1.out 2> run1.err &
PID=$!
while ! grep -q "phase 3 (train) \.\.\." run1.err 2>/dev/null; do sleep 2; if ! kill -0 $PID 2>/dev/null; then break; fi; done
sleep 20
kill -9 $PID; echo "killed $PID during phase 3" >> run1.err
sleep 1
time /work/main/.venv/bin/specdec loop "${ARGS[@]}" > run2.out 2> run2.err
echo rc=$? >> run2.out
