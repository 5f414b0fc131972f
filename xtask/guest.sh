#!/bin/sh
# The script a kernel-matrix guest runs (xtask/src/kernels.rs boots it with virtme-ng).
# $1 is the run's output directory, writable from the guest (--rwdir); in it, `env`
# exports PORTCULLIS_BIN, PORTCULLIS_EBPF_OBJECT and TESTS_DIR, and `plan` holds one
# line per test binary: "suite<TAB>binary<TAB>test names separated by spaces".
#
# Lines starting with "MATRIX: " are read by the host, which timestamps them as they
# arrive (the guest clock under TCG is not trusted for wall times). Each suite's output
# goes to the console and to <suite>.log, its exit code to <suite>.rc.
set -u
OUT=$1
. "$OUT/env"
echo "MATRIX: booted $(uname -r)"
# virtme-ng mounts cgroup2 but not bpffs; mount whichever is missing.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
grep -q ' - cgroup2 ' /proc/self/mountinfo || mount -t cgroup2 cgroup2 /sys/fs/cgroup
uname -r >"$OUT/uname"

echo "MATRIX: start verifier"
"$PORTCULLIS_BIN" debug verifier --json >"$OUT/verifier.json" 2>"$OUT/verifier.err"
echo $? >"$OUT/verifier.rc"
# verifier.json holds whole verifier logs of refusals (megabytes): the host reads the file.
cat "$OUT/verifier.err"
echo "MATRIX: end verifier"
# A refused program fails every test that starts the agent, each after verifying it
# again for minutes under TCG: the refusal is the result, the suites are not run.
if [ "$(cat "$OUT/verifier.rc")" != 0 ]; then
    echo "MATRIX: refused"
    echo "MATRIX: done"
    exit 0
fi

tab=$(printf '\t')
while IFS="$tab" read -r suite binary tests; do
    echo "MATRIX: start $suite"
    # The tests find their helper scripts relative to the package directory, as under
    # `cargo test`. $tests is split into one filter per name on purpose.
    # shellcheck disable=SC2086
    { (cd "$TESTS_DIR" && "$binary" --test-threads=1 --exact $tests) 2>&1; echo $? >"$OUT/$suite.rc"; } |
        tee "$OUT/$suite.log"
    echo "MATRIX: end $suite"
done <"$OUT/plan"
echo "MATRIX: done"
