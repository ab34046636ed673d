#!/usr/bin/env bash
# The scale benchmark (not a test, no VMs): N simulated installers at once
# against one `rollout serve`, each in its own network namespace on a bridge,
# doing over the network what a node does (examples/sim_installer.rs: DHCP,
# iPXE script, kernel + initramfs over HTTP, plan, copy slot, rsync copy into a
# directory of its own, progress events, installed, phone-home), then the same
# N clients fetching the same kernel and initramfs, then a tarball of the same
# serial, from nginx (sendfile) as the raw baseline (timed from the tarball on,
# as the copy is timed from its step on: both windows hold the other clients'
# boot downloads). Per N it prints installs completed/failed, p50/p99 install
# time, aggregate copy MB/s against the raw baseline's, and the server's CPU
# seconds per install (rollout + its rsync daemon and children, from a cpuacct
# cgroup) beside nginx's.
#
#   scripts/bench-scale.sh               # N = 1 10 50 200, the tiny image
#   scripts/bench-scale.sh 1 10          # some N
#   MAX_COPIES=16 scripts/bench-scale.sh 50   # [install] max_copies (default: sized from the machine)
#   TAR_PREFILL=1 scripts/bench-scale.sh      # [install] tar_prefill: the HTTP tar stream, then rsync
#   ROUNDS=3 scripts/bench-scale.sh 50        # each N three times, rollout and raw in turn; the
#                                             # table gives medians (one raw run swings by a third
#                                             # on a shared machine) and every round's ratio
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-scale.sh: run as root (network namespaces, cgroups)" >&2; exit 1; }
NS=("$@")
[ ${#NS[@]} -gt 0 ] || NS=(1 10 50 200)
ROUNDS=${ROUNDS:-1}
[[ "$ROUNDS" =~ ^[0-9]+$ && "$ROUNDS" -ge 1 && "$ROUNDS" -le 20 ]] || { echo "bench-scale.sh: ROUNDS must be 1 to 20, not $ROUNDS" >&2; exit 1; }
max_n=0
for n in "${NS[@]}"; do
  [[ "$n" =~ ^[0-9]+$ && "$n" -ge 1 && "$n" -le 250 ]] || { echo "bench-scale.sh: N must be 1 to 250, not $n" >&2; exit 1; }
  [ "$n" -gt "$max_n" ] && max_n=$n
done
for tool in ip nginx curl tar rsync python3 busybox; do
  command -v "$tool" >/dev/null || { echo "bench-scale.sh: $tool is missing (run scripts/setup.sh)" >&2; exit 1; }
done
source "$HOME/.cargo/env" 2>/dev/null || true
cargo build -q --release -p rollout-installer --target x86_64-unknown-linux-musl
# The server as it is shipped (scripts/package.sh builds release): a debug build
# spends several times the CPU per request serving kernels and initramfs.
cargo build -q --release -p rollout --bin rollout
# Release, as the installer ships (a debug build does the installer's own work several
# times slower, on the same two cores the server uses).
cargo build -q --release -p rollout-installer --example sim_installer
ROLLOUT=$PWD/target/release/rollout
SIM=$PWD/target/release/examples/sim_installer

tag=rbs$$
srv=$tag-s
work=$(mktemp -d /tmp/rollout-bench-scale.XXXXXX)
cg=/sys/fs/cgroup/cpuacct
cg_srv=$cg/$tag-rollout
cg_raw=$cg/$tag-nginx
server_pid=
nginx_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
  for ns in $(ip netns list | awk '{print $1}' | grep "^$tag-" || true); do ip netns del "$ns"; done
  rmdir "$cg_srv" "$cg_raw" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir "$cg_srv" "$cg_raw"

echo "bench-scale: the tiny image, $max_n client namespaces" >&2
scripts/make-tiny-image.sh "$work/tree" >&2
mkdir -p "$work/www"
tar -C "$work/tree" -cf "$work/www/image.tar" .

# The server's namespace with its bridge; a /22 holds 250 reserved nodes.
ip netns add "$srv"
ip -n "$srv" link set lo up
ip -n "$srv" link add sbr0 type bridge
ip -n "$srv" addr add 10.44.0.1/22 dev sbr0
ip -n "$srv" link set sbr0 up
mac_of() { printf '52:54:00:5c:%02x:%02x' $(($1 / 256)) $(($1 % 256)); }
for k in $(seq 1 "$max_n"); do
  c=$tag-c$k
  ip netns add "$c"
  ip -n "$srv" link add "p$k" type veth peer name eth0 netns "$c"
  ip -n "$srv" link set "p$k" master sbr0 up
  ip -n "$c" link set lo up
  ip -n "$c" link set eth0 address "$(mac_of "$k")" up
done

# CPU seconds a cpuacct cgroup has used.
cpu_of() { awk '{printf "%.3f", $1 / 1e9}' "$1/cpuacct.usage"; }

run_rollout() { # N KEY -> $work/out-KEY/*.log
  local n=$1 key=$2 state=$work/state-$2 cfg=$work/rollout-$2.toml
  {
    echo "state_dir = \"$state\""
    echo "[server]"
    echo "interface = \"sbr0\""
    echo "address = \"10.44.0.1\""
    echo "[dhcp]"
    echo "mode = \"full\""
    echo "range = [\"10.44.2.1\", \"10.44.3.250\"]"
    echo "lease_time = 3600"
    echo "[install]"
    echo "image = \"tiny\""
    [ -n "${MAX_COPIES:-}" ] && echo "max_copies = $MAX_COPIES"
    [ -n "${TAR_PREFILL:-}" ] && echo "tar_prefill = true"
    for k in $(seq 1 "$n"); do
      printf '[[node]]\nmac = "%s"\nhostname = "s%d"\nip = "10.44.1.%d"\n' "$(mac_of "$k")" "$k" "$k"
    done
  } > "$cfg"
  "$ROLLOUT" --config "$cfg" image import tiny "$work/tree" >/dev/null 2>&1
  "$ROLLOUT" --config "$cfg" initramfs build >/dev/null 2>&1
  # The raw clients fetch the same boot files first, as every node does before its copy.
  cp "$state/boot/vmlinuz" "$state/boot/initramfs.img" "$work/www/"
  sh -c "echo \$\$ > $cg_srv/cgroup.procs; exec ip netns exec $srv $ROLLOUT serve --config $cfg" \
    > "$work/serve-$key.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do
    ip netns exec "$srv" curl -sf --max-time 1 http://10.44.0.1/healthz >/dev/null && break
    sleep 0.2
  done
  local image_root=$state/images/tiny/published/root
  local cpu0 t0
  cpu0=$(cpu_of "$cg_srv")
  mkdir -p "$work/out-$key" "$work/dest"
  for k in $(seq 1 "$n"); do
    ip netns exec "$tag-c$k" "$SIM" eth0 "$(mac_of "$k")" http://10.44.0.1 \
      "$work/dest/$k" "$image_root" > "$work/out-$key/$k.log" 2>&1 &
  done
  wait $(jobs -p | grep -v "^$server_pid$") 2>/dev/null || true
  echo "$(cpu_of "$cg_srv") $cpu0" > "$work/cpu-rollout-$key"
  grep -h "max_copies\|copy slots" "$work/serve-$key.log" | head -1 | sed 's/.*max_copies=\([0-9]*\).*/\1/' > "$work/slots-$key" || true
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
  server_pid=
  rm -rf "$state" "$work/dest"
}

run_raw() { # N KEY -> $work/raw-KEY/*.log: "start_ms end_ms rc"
  local n=$1 key=$2 conf=$work/nginx.conf
  cat > "$conf" <<EOF
user root;
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
daemon off;
events { worker_connections 4096; }
http {
  sendfile on;
  tcp_nopush on;
  access_log off;
  client_body_temp_path $work/nginx-tmp;
  proxy_temp_path $work/nginx-tmp;
  fastcgi_temp_path $work/nginx-tmp;
  uwsgi_temp_path $work/nginx-tmp;
  scgi_temp_path $work/nginx-tmp;
  server { listen 10.44.0.1:8081; root $work/www; }
}
EOF
  mkdir -p "$work/nginx-tmp" "$work/raw-$key" "$work/rawdest"
  sh -c "echo \$\$ > $cg_raw/cgroup.procs; exec ip netns exec $srv nginx -c $conf" 2>>"$work/nginx-error.log" &
  nginx_pid=$!
  for _ in $(seq 50); do
    ip netns exec "$srv" curl -sf --max-time 1 -o /dev/null -r 0-0 http://10.44.0.1:8081/image.tar && break
    sleep 0.2
  done
  local cpu0
  cpu0=$(cpu_of "$cg_raw")
  for k in $(seq 1 "$n"); do
    ip netns exec "$tag-c$k" sh -c '
      d=$1; mkdir -p "$d"
      curl -sf -o /dev/null http://10.44.0.1:8081/vmlinuz
      curl -sf -o /dev/null http://10.44.0.1:8081/initramfs.img
      s=$(date +%s%3N)
      curl -sf http://10.44.0.1:8081/image.tar | tar -x -C "$d"; rc=$?
      echo "$s $(date +%s%3N) $rc"; rm -rf "$d"' sh "$work/rawdest/$k" > "$work/raw-$key/$k.log" 2>&1 &
  done
  wait $(jobs -p | grep -v "^$nginx_pid$") 2>/dev/null || true
  echo "$(cpu_of "$cg_raw") $cpu0" > "$work/cpu-raw-$key"
  kill "$nginx_pid"; wait "$nginx_pid" 2>/dev/null || true
  nginx_pid=
  rm -rf "$work/rawdest"
}

for n in "${NS[@]}"; do
  for r in $(seq 1 "$ROUNDS"); do
    echo "bench-scale: N=$n round $r of $ROUNDS: rollout" >&2
    run_rollout "$n" "$n-$r"
    echo "bench-scale: N=$n round $r of $ROUNDS: raw (nginx)" >&2
    run_raw "$n" "$n-$r"
    for k in $(seq 1 "$n"); do ip -n "$tag-c$k" addr flush dev eth0; done
  done
done

python3 - "$work" "$ROUNDS" "${NS[@]}" <<'PY'
import json, os, statistics, sys
work, rounds, ns = sys.argv[1], int(sys.argv[2]), [int(n) for n in sys.argv[3:]]
def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")

def one_round(n, key):
    """One round of N: rollout's installs and the raw baseline's copies."""
    sims = []
    for k in range(1, n + 1):
        text = open(f"{work}/out-{key}/{k}.log").read()
        line = [l for l in text.splitlines() if l.startswith("SIM ")]
        sims.append(json.loads(line[-1][4:]) if line else {"ok": False, "error": text[-300:]})
    ok = [s for s in sims if s.get("ok")]
    bad = [s for s in sims if not s.get("ok")]
    for s in bad[:3]:
        print(f"  failed: {s.get('mac', '?')}: {s.get('error', '?')}", file=sys.stderr)
    image_bytes = max((s["verified_bytes"] for s in ok), default=0)
    copy_mbs = 0.0
    if ok:
        window = (max(s["copy_end_ms"] for s in ok) - min(s["copy_start_ms"] for s in ok)) / 1000
        copy_mbs = len(ok) * image_bytes / window / 1e6
    raws = [tuple(map(int, open(f"{work}/raw-{key}/{k}.log").read().split()[:3])) for k in range(1, n + 1)]
    raw_ok = [r for r in raws if r[2] == 0]
    raw_window = (max(r[1] for r in raw_ok) - min(r[0] for r in raw_ok)) / 1000 if raw_ok else float("inf")
    raw_mbs = len(raw_ok) * image_bytes / raw_window / 1e6
    c1, c0 = map(float, open(f"{work}/cpu-rollout-{key}").read().split())
    r1, r0 = map(float, open(f"{work}/cpu-raw-{key}").read().split())
    return {
        "ok": len(ok), "bad": len(bad), "image": image_bytes,
        "secs": [(s["end_ms"] - s["start_ms"]) / 1000 for s in ok],
        "copy": copy_mbs, "raw": raw_mbs, "ratio": copy_mbs / raw_mbs if raw_mbs else 0.0,
        "cpu": (c1 - c0) / max(len(ok), 1), "nginx": (r1 - r0) / max(len(raw_ok), 1),
        "slots": open(f"{work}/slots-{key}").read().strip() or "?",
    }

med = statistics.median
print("| N | rounds | slots | completed | failed | p50 install s | p99 install s | copy MB/s | raw MB/s | copy/raw | server CPU s/install | nginx CPU s/install |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
per_round = []
for n in ns:
    rs = [one_round(n, f"{n}-{r}") for r in range(1, rounds + 1)]
    secs = [x for r in rs for x in r["secs"]]
    print(f"| {n} | {rounds} | {rs[0]['slots']} | {sum(r['ok'] for r in rs)} | {sum(r['bad'] for r in rs)} "
          f"| {pct(secs, 50):.1f} | {pct(secs, 99):.1f} | {med(r['copy'] for r in rs):.0f} | {med(r['raw'] for r in rs):.0f} "
          f"| {med(r['ratio'] for r in rs):.2f} | {med(r['cpu'] for r in rs):.3f} | {med(r['nginx'] for r in rs):.3f} |")
    per_round.append((n, rs))
image_bytes = max(r["image"] for _, rs in per_round for r in rs)
if rounds > 1:
    print("\nper round (copy MB/s / raw MB/s = copy/raw):")
    for n, rs in per_round:
        print(f"  N={n}: " + ", ".join(f"{r['copy']:.0f}/{r['raw']:.0f} = {r['ratio']:.2f}" for r in rs))
print(f"\nimage: {image_bytes / 1e6:.1f} MB of files per install; copy MB/s = completed x image / (last copy end - first copy start, queue waits included); raw = the same bytes as one tarball from nginx (sendfile) to the same N clients, curl | tar -x, each after fetching the same kernel and initramfs (timed from the tarball on); with several rounds: completed and failed summed, p50/p99 over every install, the rest medians (copy/raw: the median of each round's own ratio)")
PY
