#!/usr/bin/env bash
# Runs the test suite once per Keras backend; fails if any backend fails.
# Usage: tests/run_backends.sh PYTHON "tensorflow jax torch" [PYTEST ARGS...]
#
# With PARALLEL=1 the backends run side by side: each run is mostly
# single-threaded Python and compilation, so on 2 cores three at once take
# about half as long as one after another. Each backend gets its own log
# and pytest temp directory under .test-logs/, and its report is printed
# once all have ended.
set -u
python=$1 backends=$2
shift 2
logs=.test-logs
rm -rf "$logs" && mkdir -p "$logs"

run() {  # run BACKEND: pytest on one backend, exit status to $logs/BACKEND.rc
  KERAS_BACKEND=$1 "$python" -m pytest -q "${@:2}" \
    --basetemp="$logs/tmp-$1" tests
  echo $? > "$logs/$1.rc"
}

for backend in $backends; do
  if [ "${PARALLEL:-1}" = 1 ]; then
    run "$backend" "$@" > "$logs/$backend.log" 2>&1 &
  else
    echo "=== KERAS_BACKEND=$backend"
    run "$backend" "$@"
  fi
done
wait

status=0
for backend in $backends; do
  if [ "${PARALLEL:-1}" = 1 ]; then
    echo "=== KERAS_BACKEND=$backend"
    cat "$logs/$backend.log"
  fi
  [ "$(cat "$logs/$backend.rc")" = 0 ] || status=1
done
exit $status
