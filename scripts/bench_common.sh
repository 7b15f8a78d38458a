# Shared by the side-by-side benchmarks (bench-influence, bench-eval, bench-train); sourced, not
# run. Sets $curate (the release binary, built) and $work (a scratch directory removed on exit),
# and defines measure. BEFORE=<another curate binary> also runs that binary on the same rows in
# the same run (labels "before-..."), for before-and-after tables. CURATE=<binary> measures that
# binary instead of building one (a `--features tch` build, say), and CURATE_ARGS adds flags to
# its runs only (`--device tch-cpu`), so BEFORE can be the default build in the same run.

if [ -n "${CURATE:-}" ]; then
  curate=$CURATE
else
  cargo build --release --quiet
  target_dir=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  curate="$target_dir/release/curate"
fi
read -r -a curate_args <<< "${CURATE_ARGS:-}"
before=${BEFORE:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# measure LABEL COMMAND...: runs it, prints wall seconds and peak RSS in MiB, and appends
# "LABEL WALL RSS_KIB" to $work/results.txt.
measure() {
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$work/time.txt" "$@" >"$work/$label.log" 2>&1 || { cat "$work/$label.log"; exit 1; }
  read -r wall rss < "$work/time.txt"
  printf '%-22s wall %8.2f s   peak %7.1f MiB\n' "$label" "$wall" "$(echo "$rss / 1024" | bc -l)"
  echo "$label $wall $rss" >> "$work/results.txt"
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
export THREADS="${THREADS:-1}"
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
echo "threads: $THREADS each"
