#!/usr/bin/env bash
# The summary of scripts/test.sh, from the logs it leaves in target/:
#   DIR/test-NAME.log     everything the group printed (cargo and libtest output)
#   DIR/test-NAME.status  "EXIT SECONDS [KIND [WHY]]", KIND one of tests (the
#                         default), build (a build step, no tests expected) or
#                         cached (not run because what it makes is there; WHY says so)
#
#   scripts/test-summary.sh DIR NAME...     (or source it and call summarize)
#
# prints one line per group, then as the very last line the totals over all groups,
# "N passed, N failed". Exits 1 when anything failed or no test ran. A group that
# fails without a failing test (a compile error, a crashed test binary, no libtest
# "test result:" line at all) counts as one failure, so a failed run never ends
# with "0 failed".

summarize() {
  local dir=$1
  shift
  local name rc secs kind why n p f i note log passed=0 failed=0 status=0
  for name in "$@"; do
    log="$dir/test-$name.log"
    rc=1 secs=? kind=tests why=""
    if [ ! -r "$dir/test-$name.status" ]; then
      echo "group $name: FAILED (no $dir/test-$name.status: it did not finish)"
      failed=$((failed + 1)) status=1
      continue
    fi
    read -r rc secs kind why <"$dir/test-$name.status" || true
    kind=${kind:-tests}
    case $kind in
      build)
        if [ "$rc" = 0 ]; then
          echo "build $name: ok in $secs s"
        else
          echo "build $name: FAILED (exit $rc) in $secs s, see $log"
          failed=$((failed + 1)) status=1
        fi
        continue
        ;;
      cached)
        echo "group $name: not run: ${why:-cached}"
        continue
        ;;
    esac
    # Every libtest result line, colour codes removed; -o also finds a line that a
    # test's own output ran into.
    read -r n p f i < <(
      { sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$log" 2>/dev/null || true; } |
        grep -oE 'test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed; [0-9]+ ignored' |
        awk '{ n++; p += $4; f += $6; i += $8 } END { print n + 0, p + 0, f + 0, i + 0 }'
    )
    note=""
    if [ "$f" -gt 0 ]; then
      note=" FAILED"
      [ "$rc" != 0 ] || note=" FAILED (yet cargo exited 0)"
    elif [ "$rc" != 0 ]; then
      note=" FAILED (cargo exit $rc without a failing test: a compile error or a crash, see $log)"
      f=1
    elif [ "$n" -eq 0 ]; then
      note=" FAILED (no test result line in $log)"
      f=1
    fi
    [ -z "$note" ] || status=1
    echo "group $name: $p passed, $f failed, $i ignored in $secs s$note"
    passed=$((passed + p)) failed=$((failed + f))
  done
  if [ $((passed + failed)) -eq 0 ]; then
    echo "no test ran"
    status=1
  fi
  echo "$passed passed, $failed failed"
  return $status
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  [ $# -ge 2 ] || {
    echo "usage: $0 DIR GROUP..." >&2
    exit 2
  }
  summarize "$@"
fi
