#!/usr/bin/env bash
# DHCP ceilings of rollout, Kea 2.2 (memfile) and dnsmasq, and of rollout and Kea on one
# PostgreSQL, measured in the same run with the same load generator (perfdhcp, from
# kea-admin), each server alone in a fresh state inside two network namespaces this script
# makes and removes.
#
#   scripts/bench-dhcp.sh [--rates R1,R2,..] [--pg-rates R1,..] [--clients N] [--seconds S]
#                         [--servers a,b,..] [--cpus split|shared]
#
#   --rates     offered DORA exchanges/s, a ladder above every server's ceiling
#               (default 2000,5000,10000,20000,40000)
#   --pg-rates  the same for the servers on PostgreSQL (default 1000,1500,2000,3000,5000,10000,20000)
#   --load-rates  the overload part's ladder, offered by examples/dhcp_load.rs (default
#               10000,20000,40000,80000; the PostgreSQL servers use --pg-rates)
#   --clients   distinct client MACs perfdhcp uses (default 20000)
#   --seconds   how long each rate is offered (default 4; the default run takes ~5 min)
#   --servers   which servers to run (default rollout,kea,dnsmasq,rollout-pg,kea-pg,kea-pg-mt):
#               rollout = SQLite in state_dir, kea = memfile, rollout-pg = [store] url,
#               kea-pg = lease-database type postgresql (Kea 2.2's defaults: one thread),
#               kea-pg-mt = the same with multi-threading on (4 threads); all three on one
#               PostgreSQL 15 this script starts in the server namespace (TCP on that
#               namespace's loopback only), each with its tables emptied before each run
#   --cpus      split (the default on 2 or more CPUs): the server under test (and PostgreSQL)
#               runs on CPU 0, perfdhcp and the ACK capture on the others, so the generator
#               offering twice a ceiling does not take the CPU the server needs; shared: all
#               of them on all CPUs (how the figures before this option were measured)
#   KEEP=1      keep the work directory (logs, captures, configs) and print its path
#   ROLLOUT_BIN=path   measure that rollout binary instead of building target/release/rollout
#
# Per server and offered rate it prints leases/s achieved (perfdhcp's 4-way exchanges/s),
# DISCOVERs and REQUESTs dropped, and the ACKs captured. A server's ceiling is the best rate
# it reached on the ladder. The overload part runs the ladder again with dhcp_load (a lean
# generator: perfdhcp on one CPU cannot send twice a ceiling here), then offers each server
# 2x its dhcp_load ceiling and prints what the generator really sent and that rate /
# the ceiling (rollout must not collapse under overload: >= 0.9; the peers' figures show what
# the same generator on the same cores does to them), and rollout/Kea at saturation, for
# SQLite/memfile and for PostgreSQL.
# Every ACK is captured (tcpdump on the client side) and checked: each ACKed address maps
# to exactly one client MAC, or the run fails.
#
# rollout writes every lease to SQLite (WAL, synchronous=FULL: fsync) before its ACK leaves;
# Kea's memfile appends to a CSV file without fsync; dnsmasq rewrites its lease file without
# fsync. On PostgreSQL both commit each lease before the ACK: rollout one transaction per
# batch (group commit), Kea 2.2 one statement per lease (its default: multi-threading off);
# PostgreSQL runs with its defaults (fsync and synchronous_commit on), data in a temp dir.
# Both rollout and Kea log warnings only here (per-packet info logging off).
set -euo pipefail
cd "$(dirname "$0")/.."
rates=2000,5000,10000,20000,40000 pg_rates=1000,1500,2000,3000,5000,10000,20000 clients=20000 seconds=4
servers=rollout,kea,dnsmasq,rollout-pg,kea-pg,kea-pg-mt
load_rates=10000,20000,40000,80000
cpus=split
while [ $# -gt 0 ]; do
  case "$1" in
    --rates) rates=$2; shift 2 ;;
    --pg-rates) pg_rates=$2; shift 2 ;;
    --load-rates) load_rates=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --servers) servers=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    -h|--help) sed -n '2,46p' "$0"; exit 0 ;;
    *) echo "bench-dhcp: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
ncpu=$(nproc)
case "$cpus" in
  split) if [ "$ncpu" -ge 2 ]; then server_cpus=0 load_cpus=1-$((ncpu - 1)); else server_cpus=0 load_cpus=0; cpus=shared; fi ;;
  shared) server_cpus=0-$((ncpu - 1)) load_cpus=$server_cpus ;;
  *) echo "bench-dhcp: --cpus is split or shared, not $cpus" >&2; exit 2 ;;
esac
# perfdhcp picks its multi-thread mode (a receiver thread) from the machine's CPU count,
# not from its affinity: on one CPU of its own its threads only take turns. Single-thread
# mode there.
perfdhcp_mode=()
[ "$load_cpus" = 1-1 ] && perfdhcp_mode=(-g single)
# Runs a command in a namespace on the server's or the load's CPUs.
in_srv() { ip netns exec "$srv" taskset -c "$server_cpus" "$@"; }
in_cli() { ip netns exec "$cli" taskset -c "$load_cpus" "$@"; }
[ "$(id -u)" = 0 ] || { echo "bench-dhcp: run as root (network namespaces)" >&2; exit 1; }
./scripts/setup.sh >/dev/null
# The overload rows' generator (examples/dhcp_load.rs): perfdhcp cannot send twice a
# ceiling here (on one CPU it sent about 33,000 DISCOVERs/s when asked for 40,000), so
# those rows would measure perfdhcp, not the server.
cargo build --release --example dhcp_load -q
DHCP_LOAD=$PWD/target/release/examples/dhcp_load
if [ -z "${ROLLOUT_BIN:-}" ]; then
  cargo build --release --bin rollout -q
  ROLLOUT_BIN=target/release/rollout
fi
work=$(mktemp -d)
# PostgreSQL's data: owned by the postgres user, so not under $work (root's, mode 0700).
pgdata=$(mktemp -d)
srv=rbench-s-$$ cli=rbench-c-$$
cleanup() {
  if [ -f "$pgdata/data/postmaster.pid" ]; then
    runuser -u postgres -- pg_ctl stop -m fast -w -D "$pgdata/data" >/dev/null 2>&1 || true
  fi
  for ns in "$srv" "$cli"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  if [ -n "${KEEP:-}" ]; then
    echo "bench-dhcp: work directory kept: $work (PostgreSQL: $pgdata)"
  else
    rm -rf "$work" "$pgdata"
  fi
}
trap cleanup EXIT INT TERM
ip netns add "$srv"; ip netns add "$cli"
ip -n "$srv" link set lo up; ip -n "$cli" link set lo up
ip -n "$srv" link add rbr0 type bridge
ip -n "$srv" addr add 10.44.0.1/16 dev rbr0
ip -n "$srv" link set rbr0 up
ip -n "$srv" link add p0 type veth peer name c0 netns "$cli"
ip -n "$srv" link set p0 master rbr0 up
ip -n "$cli" addr add 10.44.0.2/16 dev c0
ip -n "$cli" link set c0 up

first=10.44.1.0 last=10.44.254.255
# PostgreSQL for rollout-pg and kea-pg: one server, one database each, listening on the
# server namespace's loopback only (nothing outside the namespace can reach it).
psql_srv() { # database, SQL
  ip netns exec "$srv" psql -h 127.0.0.1 -U postgres -d "$1" -qAtc "$2"
}
start_postgres() {
  export PATH="$PATH:/usr/local/bin:/usr/lib/postgresql/15/bin"
  command -v initdb >/dev/null ||
    { echo "bench-dhcp: initdb not found (Debian package postgresql-15); or leave rollout-pg,kea-pg out of --servers" >&2; exit 1; }
  chown postgres: "$pgdata"
  runuser -u postgres -- initdb -A trust -U postgres -D "$pgdata/data" >"$work/initdb.log" 2>&1 ||
    { cat "$work/initdb.log" >&2; exit 1; }
  in_srv runuser -u postgres -- pg_ctl start -w -t 60 -l "$pgdata/log" -D "$pgdata/data" \
    -o "-c listen_addresses=127.0.0.1 -c unix_socket_directories='$pgdata' -c max_connections=50" >/dev/null ||
    { echo "bench-dhcp: PostgreSQL did not start:" >&2; cat "$pgdata/log" >&2; exit 1; }
  psql_srv postgres "CREATE DATABASE rollout" && psql_srv postgres "CREATE DATABASE kea"
  ip netns exec "$srv" kea-admin db-init pgsql -h 127.0.0.1 -u postgres -p unused -n kea >"$work/kea-admin.log" 2>&1 ||
    { echo "bench-dhcp: kea-admin db-init pgsql failed:" >&2; cat "$work/kea-admin.log" >&2; exit 1; }
}
if [[ ",$servers," == *-pg* ]]; then start_postgres; fi

start_rollout() { # [more TOML]
  cat > "$work/rollout.toml" <<TOML
state_dir = "$work/state"
[server]
interface = "rbr0"
address = "10.44.0.1"
http_port = 8080
tftp_port = 6969
rsync_port = 8873
[dhcp]
mode = "full"
range = ["$first", "$last"]
netmask = "255.255.0.0"
lease_time = 3600
# perfdhcp's thousands of made-up MACs are exactly what the new-client rate
# limit stops; the benchmark measures the lease path, so lift it.
new_clients_per_minute = 10000000
new_clients_burst = 1000000
${1:-}
TOML
  rm -rf "$work/state"
  ROLLOUT_LOG=warn in_srv "$ROLLOUT_BIN" -c "$work/rollout.toml" serve >"$work/rollout.log" 2>&1 &
}
start_rollout-pg() {
  # A fresh start, as for the others: the table exists after the first run (rollout
  # migrates at startup), its rows go.
  psql_srv rollout "DO \$\$ BEGIN IF to_regclass('leases') IS NOT NULL THEN TRUNCATE leases; END IF; END \$\$"
  start_rollout "[store]
url = \"postgres://postgres@127.0.0.1/rollout\""
}
start_kea() { # [lease-database JSON] [more Dhcp4 JSON members]
  rm -f "$work"/kea-leases.csv*
  local db=${1:-}
  [ -n "$db" ] || db="{ \"type\": \"memfile\", \"persist\": true, \"lfc-interval\": 0, \"name\": \"$work/kea-leases.csv\" }"
  cat > "$work/kea.json" <<JSON
{ "Dhcp4": {
    "interfaces-config": { "interfaces": ["rbr0"], "dhcp-socket-type": "udp" },
    "lease-database": $db,
    "valid-lifetime": 3600,${2:-}
    "subnet4": [ { "id": 1, "subnet": "10.44.0.0/16", "pools": [ { "pool": "$first - $last" } ] } ],
    "loggers": [ { "name": "kea-dhcp4", "severity": "WARN",
                   "output_options": [ { "output": "$work/kea.log" } ] } ]
} }
JSON
  KEA_PIDFILE_DIR=$work KEA_LOCKFILE_DIR=$work in_srv kea-dhcp4 -c "$work/kea.json" >"$work/kea.out" 2>&1 &
}
start_kea-pg() {
  psql_srv kea "TRUNCATE lease4, lease4_stat"
  start_kea '{ "type": "postgresql", "name": "kea", "host": "127.0.0.1", "user": "postgres", "password": "unused" }' "$@"
}
start_kea-pg-mt() {
  start_kea-pg '
    "multi-threading": { "enable-multi-threading": true, "thread-pool-size": 4, "packet-queue-size": 64 },'
}
start_dnsmasq() {
  rm -f "$work/dnsmasq.leases"
  in_srv dnsmasq --no-daemon --port=0 --interface=rbr0 --bind-interfaces \
    --dhcp-range="$first,$last,255.255.0.0,1h" --dhcp-authoritative --dhcp-lease-max=100000 \
    --dhcp-leasefile="$work/dnsmasq.leases" --no-hosts --no-resolv --no-ping --quiet-dhcp --log-facility=- >"$work/dnsmasq.log" 2>&1 &
}

# Checks a capture of server → relay traffic: every ACKed address has exactly one chaddr.
# Prints "<acks> <distinct addresses> <duplicated addresses>".
check_acks() { # pcap
  python3 - "$1" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
link = struct.unpack_from("<I", data, 20)[0]
off, owners, acks = 24, {}, 0
while off + 16 <= len(data):
    _, _, incl, _ = struct.unpack_from("<IIII", data, off)
    pkt = data[off + 16: off + 16 + incl]
    off += 16 + incl
    p = pkt[14:] if link == 1 else pkt
    if len(p) < 20 or p[0] >> 4 != 4 or p[9] != 17:
        continue
    bootp = p[(p[0] & 15) * 4 + 8:]
    if len(bootp) < 244 or bootp[236:240] != b"\x63\x82\x53\x63":
        continue
    i, kind = 240, None
    while i + 1 < len(bootp) and bootp[i] != 255:
        if bootp[i] == 0:
            i += 1; continue
        if bootp[i] == 53:
            kind = bootp[i + 2]
        i += 2 + bootp[i + 1]
    if kind != 5:
        continue
    acks += 1
    owners.setdefault(bootp[16:20], set()).add(bootp[28:34])
dups = sum(1 for macs in owners.values() if len(macs) > 1)
print(acks, len(owners), dups)
PY
}

# Every process in the server namespace but PostgreSQL (which serves the next run).
stop_servers() {
  local keep=""
  [ -f "$pgdata/data/postmaster.pid" ] && keep=$(head -1 "$pgdata/data/postmaster.pid")
  for pid in $(ip netns pids "$srv"); do
    [ -n "$keep" ] && [ "$(ps -o ppid= -p "$pid" | tr -d ' ')" = "$keep" ] && continue
    [ "$pid" = "$keep" ] || kill "$pid" 2>/dev/null || true
  done
}

declare -A result
measure() { # server rate [generator] → result[server,rate]="leases/s discover_drops request_drops acks dups discovers_sent"
  local s=$1 rate=$2 gen=${3:-perfdhcp} out pcap="$work/$1-$2.pcap" tpid
  "start_$s"; sleep 1.5
  # Not through in_cli: $! must be tcpdump itself, to stop it below.
  ip netns exec "$cli" taskset -c "$load_cpus" tcpdump -i c0 -B 65536 -s 400 -w "$pcap" 'udp src port 67' >"$work/tcpdump.log" 2>&1 &
  tpid=$!; sleep 0.5
  # Unicast to the server, as a relay sends (perfdhcp sets giaddr): Kea's UDP socket,
  # bound to the address, does not see broadcasts. -W: replies still on their way when
  # the period ends (100 ms, well above a batch's fsync) are counted, not reported as drops.
  local r d1 d2 caught sent
  if [ "$gen" = perfdhcp ]; then
    out=$(in_cli perfdhcp -4 -l c0 -r "$rate" -R "$clients" -p "$seconds" -W 100000 "${perfdhcp_mode[@]}" 10.44.0.1 2>&1 || true)
    r=$(awk '/^Rate:/ {print $2; exit}' <<<"$out")
    d1=$(awk '/^drops:/ {n++; if (n==1) {print $2; exit}}' <<<"$out")
    d2=$(awk '/^drops:/ {n++; if (n==2) {print $2; exit}}' <<<"$out")
    sent=$(awk '/^sent packets:/ {print $3; exit}' <<<"$out")
  else
    out=$(in_cli "$DHCP_LOAD" --server 10.44.0.1 --local 10.44.0.2 --rate "$rate" --seconds "$seconds" \
      --clients "$clients" --wait-ms 100 2>&1 || true)
    r=$(awk '$1 == "rate" {print $2}' <<<"$out")
    sent=$(awk '$1 == "sent" {print $2}' <<<"$out")
    d1=$(awk '$1 == "sent" {s = $2} $1 == "offers" {print s - $2}' <<<"$out")
    d2=$(awk '$1 == "requests" {q = $2} $1 == "acks" {print q - $2}' <<<"$out")
  fi
  sleep 0.3; kill "$tpid"; wait "$tpid" 2>/dev/null || true
  stop_servers; sleep 1
  echo "$out" > "$work/$s-$rate.$gen"
  if grep -q "dropped by kernel" "$work/tcpdump.log" && ! grep -q "^0 packets dropped by kernel" "$work/tcpdump.log"; then
    echo "bench-dhcp: the ACK capture of $s at $rate/s lost packets: $(grep 'dropped by kernel' "$work/tcpdump.log")" >&2
  fi
  read -r acks _ dups <<<"$(check_acks "$pcap")"
  rm -f "$pcap"
  local key=$s,$rate
  [ "$gen" = perfdhcp ] || key=$key,$gen
  result[$key]="${r:-0} ${d1:-?} ${d2:-?} $acks $dups ${sent:-0}"
  printf '  %-8s %6s/s offered (%s, sent %s DISCOVERs): %8s leases/s, drops %s/%s, %s ACKs, %s duplicated\n' "$s" "$rate" "$gen" "${sent:-?}" "${r:-0}" "${d1:-?}" "${d2:-?}" "$acks" "$dups" >&2
}

# The PostgreSQL servers get a ladder of their own: they saturate far lower, and a ladder
# that starts above a server's ceiling only measures how it behaves overloaded.
ladder_of() { case $1 in *-pg*) echo "$pg_rates" ;; *) echo "$rates" ;; esac; }
on_ladder() { [[ ",$(ladder_of "$1")," == *,$2,* ]]; }
IFS=, read -r -a names <<<"$servers"
# Rate by rate, every server on whose ladder it is: machine noise spreads over all of them.
mapfile -t all_rates < <(tr , '\n' <<<"$rates,$pg_rates" | sort -nu)
declare -A ceiling
for rate in "${all_rates[@]}"; do
  for s in "${names[@]}"; do on_ladder "$s" "$rate" && measure "$s" "$rate"; done
done
for s in "${names[@]}"; do
  best=0
  IFS=, read -r -a mine <<<"$(ladder_of "$s")"
  for rate in "${mine[@]}"; do
    read -r r _ <<<"${result[$s,$rate]}"
    best=$(awk -v a="$best" -v b="$r" 'BEGIN { print (b > a) ? b : a }')
  done
  ceiling[$s]=$best
done
# Every server at 2x its own ceiling, from dhcp_load: rollout's must hold (>= 0.9); the others'
# show what the same load generator on the same cores does to a peer.
# dhcp_load finds each server's ceiling again, on a ladder of its own (perfdhcp's ceiling
# can be perfdhcp's own limit), and then offers twice that.
declare -A over load_ceiling
for s in "${names[@]}"; do
  best=0
  IFS=, read -r -a mine <<<"$(if [[ $s == *-pg* ]]; then echo "$pg_rates"; else echo "$load_rates"; fi)"
  for rate in "${mine[@]}"; do
    measure "$s" "$rate" load
    read -r r _ <<<"${result[$s,$rate,load]}"
    best=$(awk -v a="$best" -v b="$r" 'BEGIN { print (b > a) ? b : a }')
  done
  load_ceiling[$s]=$best
  over[$s]=$(awk -v c="$best" 'BEGIN { printf "%d", 2 * c }')
  measure "$s" "${over[$s]}" load
done

printf '\nDHCP bench: perfdhcp, %s distinct clients, %s s per rate; drops = DISCOVER/REQUEST unanswered\n' "$clients" "$seconds"
printf 'CPUs (%s): servers on %s, perfdhcp and capture on %s\n' "$cpus" "$server_cpus" "$load_cpus"
fail=0
table() { # rates (comma-separated), servers…
  local ladder=$1 s rate r d1 d2 dups; shift
  [ $# -gt 0 ] || return 0
  printf '\n%-9s' "offered/s"
  for s in "$@"; do printf ' | %-41s' "$s"; done; echo
  IFS=, read -r -a rows <<<"$ladder"
  for rate in "${rows[@]}"; do
    printf '%-9s' "$rate"
    for s in "$@"; do
      read -r r d1 d2 _ dups _ <<<"${result[$s,$rate]}"
      printf ' | %9s leases/s, drops %7s/%-7s' "$r" "$d1" "$d2"
      [ "$dups" = 0 ] || fail=1
    done; echo
  done
}
plain=() pg=()
for s in "${names[@]}"; do case $s in *-pg*) pg+=("$s") ;; *) plain+=("$s") ;; esac; done
table "$rates" "${plain[@]}"
table "$pg_rates" "${pg[@]}"
echo
for s in "${names[@]}"; do printf 'ceiling %-10s %10s leases/s\n' "$s" "${ceiling[$s]}"; done
dupsum=0
for k in "${!result[@]}"; do read -r _ _ _ _ d _ <<<"${result[$k]}"; dupsum=$((dupsum + d)); done
for s in "${names[@]}"; do
  read -r r2 d1 d2 _ d sent <<<"${result[$s,${over[$s]},load]}"
  [ "$d" = 0 ] || fail=1
  want=""; [ "$s" = rollout ] && want=" (no collapse: >= 0.9)"
  # What the generator really sent: one short of CPU sends less than it is asked to,
  # and then the row measures the generator, not the server.
  awk -v s="$s" -v r="$r2" -v c="${load_ceiling[$s]}" -v o="${over[$s]}" -v w="$want" -v n="$sent" -v t="$seconds" 'BEGIN {
    printf "%s at 2x its ceiling (dhcp_load: ceiling %.0f leases/s, %d/s offered, %d DISCOVERs/s sent = %.2f x the ceiling): %.1f leases/s = %.2f x its ceiling%s\n",
      s, c, o, n / t, (c > 0) ? n / t / c : 0, r, (c > 0) ? r / c : 0, w }'
done
top=$(tr , '\n' <<<"$rates" | sort -n | tail -1)
for s in "${names[@]}"; do
  [[ $s == *-pg* ]] && continue
  awk -v s="$s" -v c="${ceiling[$s]}" -v t="$top" 'BEGIN {
    if (c >= 0.95 * t) printf "note: %s met the ladder'"'"'s top rate (%d/s): its ceiling may be higher (add a rate with --rates)\n", s, t }'
done
for pair in rollout:kea rollout-pg:kea-pg rollout-pg:kea-pg-mt; do
  a=${pair%%:*} b=${pair#*:}
  if [[ ",$servers," == *,$a,* && ",$servers," == *,$b,* ]]; then
    awk -v n="$a/$b" -v a="${ceiling[$a]}" -v b="${ceiling[$b]}" -v la="${load_ceiling[$a]}" -v lb="${load_ceiling[$b]}" 'BEGIN {
      printf "ratio %s at saturation: %.2f (perfdhcp), %.2f (dhcp_load)\n", n, (b > 0) ? a / b : 0, (lb > 0) ? la / lb : 0 }'
  fi
done
echo "duplicate addresses in the captured ACKs (every run): $dupsum"
[ "$fail" = 0 ] || { echo "bench-dhcp: FAILED: an address was ACKed to two MACs" >&2; exit 1; }
