#!/bin/bash
# The RDMA transport (transport/rdma) and the engine over it: build/release/tests/rdma/rdma_transport_test, built on
# the host (ninja -C build/release rdma_transport_test), run here between rxe0 (LAB_IP0) and rxe1 (LAB_IP1).
# A skipped test fails the suite: inside the lab nothing has a reason to skip. Extra arguments go to the test binary
# (e.g. --gtest_filter=...); RDMA_TEST_TIMEOUT (300 s) bounds the run.
set -uo pipefail
# shellcheck source=scripts/lab.d/lib.sh
. "$LAB_REPO/scripts/lab.d/lib.sh"
bin=${RDMA_TEST_BIN:-$(lab_build_dir)/tests/rdma/rdma_transport_test}
log=${TEST_LOGDIR:-${LAB_OUT:-/tmp}}/rdma_transport_test.log
if [ ! -x "$bin" ]; then
    echo "$bin is missing: build it on the host first (ninja -C build/release rdma_transport_test, or BLKMIRROR_BUILD's tree)"
    exit 1
fi
timeout -k 5 "${RDMA_TEST_TIMEOUT:-300}" "$bin" --gtest_color=no "$@" > "$log" 2>&1
rc=$?
cat "$log"
[ "$rc" -eq 124 ] && echo "rdma_transport_test: TIMEOUT after ${RDMA_TEST_TIMEOUT:-300}s"
if grep -q '^\[  SKIPPED \]' "$log"; then
    echo "rdma_transport_test: tests were SKIPPED inside the lab:"
    grep '^\[  SKIPPED \]' "$log"
    exit 1
fi
grep -qE '^\[  PASSED  \] [1-9][0-9]* test' "$log" || { echo "rdma_transport_test: no test passed"; [ "$rc" -ne 0 ] || rc=1; }
exit "$rc"
