#!/usr/bin/env bash
# Runs the test suite once per Keras backend; fails if any backend fails.
# Usage: tests/run_backends.sh PYTHON "tensorflow jax torch" [PYTEST ARGS...]
#
# With PARALLEL=1 the backends run side by side: each run is mostly
# single-threaded Python and compilation, so on 2 cores three at once take
# about half as long as one after another. Each backend gets its own log
# and pytest temp directory under .test-logs/; its output is shown as it
# runs, each line prefixed with [backend], and once all have ended the
# full log of each failed backend and the last line of each passed one.
#
# WORKERS_<backend>=N spreads that backend's tests over N pytest-xdist
# workers (whole files per worker, so module fixtures are built once).
# Off by default: on CI's 2 cores, 2+2+1 workers took 3747 s where one
# process per backend had taken 1876 s (with somewhat fewer tests).
set -u
python=$1 backends=$2
shift 2
logs=.test-logs
rm -rf "$logs" && mkdir -p "$logs"

run() {  # run BACKEND: pytest on one backend, exit status to $logs/BACKEND.rc
  # Side by side, torch's two OpenMP threads wait on each other on two
  # shared cores (a small fit step: 3.7 s with 2 threads, 0.7 s with 1).
  if [ "$1" = torch ] && [ "${PARALLEL:-1}" = 1 ]; then
    export OMP_NUM_THREADS=1
  fi
  local workers=WORKERS_$1 spread=()
  workers=${!workers:-1}
  if [ "$workers" -gt 1 ] && "$python" -c "import xdist" >/dev/null 2>&1; then
    spread=(-n "$workers" --dist loadfile)
  fi
  KERAS_BACKEND=$1 "$python" -m pytest -q --durations=15 "${spread[@]}" \
    "${@:2}" --basetemp="$logs/tmp-$1" tests
  echo $? > "$logs/$1.rc"
}

for backend in $backends; do
  if [ "${PARALLEL:-1}" = 1 ]; then
    run "$backend" "$@" 2>&1 | tee "$logs/$backend.log" \
      | sed -u "s/^/[$backend] /" &
  else
    echo "=== KERAS_BACKEND=$backend"
    run "$backend" "$@"
  fi
done
wait

status=0
for backend in $backends; do
  rc=$(cat "$logs/$backend.rc")
  if [ "${PARALLEL:-1}" = 1 ]; then
    echo "=== KERAS_BACKEND=$backend (log: $logs/$backend.log)"
    if [ "$rc" = 0 ]; then tail -n 1 "$logs/$backend.log"
    else cat "$logs/$backend.log"; fi
  fi
  [ "$rc" = 0 ] || status=1
done
exit $status
