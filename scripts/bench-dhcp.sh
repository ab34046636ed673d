#!/usr/bin/env bash
# DHCP throughput and latency of rollout against dnsmasq, measured in the same run
# with the same load generator (perfdhcp, from kea-admin), inside two network
# namespaces this script makes and removes. Prints a table and rollout/dnsmasq ratios.
#
#   scripts/bench-dhcp.sh [RATE] [CLIENTS]     defaults: 3000 exchanges/s offered, 6000 clients
#
# rollout writes every lease to SQLite with fsync before it ACKs (a restart or a
# kill -9 never hands an address out twice); dnsmasq rewrites its lease file
# without fsync. The ratio shows what that durability costs.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-3000}
clients=${2:-6000}
[ "$(id -u)" = 0 ] || { echo "bench-dhcp: run as root (network namespaces)" >&2; exit 1; }
./scripts/setup.sh >/dev/null
cargo build --release --bin rollout -q
work=$(mktemp -d)
srv=rbench-s-$$ cli=rbench-c-$$
cleanup() {
  for ns in "$srv" "$cli"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  [ -n "${KEEP:-}" ] || rm -rf "$work"
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
start_rollout() {
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
new_clients_burst = 100000
TOML
  rm -rf "$work/state"
  ip netns exec "$srv" target/release/rollout -c "$work/rollout.toml" serve >"$work/rollout.log" 2>&1 &
}
start_dnsmasq() {
  rm -f "$work/dnsmasq.leases"
  ip netns exec "$srv" dnsmasq --no-daemon --port=0 --interface=rbr0 --bind-interfaces \
    --dhcp-range="$first,$last,255.255.0.0,1h" --dhcp-authoritative --dhcp-lease-max=100000 \
    --dhcp-leasefile="$work/dnsmasq.leases" --no-hosts --no-resolv --no-ping --quiet-dhcp --log-facility=- >"$work/dnsmasq.log" 2>&1 &
}

declare -A result
measure() { # name
  sleep 1.5
  out=$(ip netns exec "$cli" perfdhcp -4 -l c0 -r "$rate" -R "$clients" -n "$clients" -p 60 2>&1 || true)
  ip netns pids "$srv" | xargs -r kill; sleep 1
  local r d1 l1 l2
  r=$(awk '/^Rate:/ {print $2; exit}' <<<"$out")
  d1=$(awk '/drops ratio/ {print $3; exit}' <<<"$out")
  l1=$(awk '/avg delay/ {print $3; n++; if (n==1) exit}' <<<"$out")
  l2=$(awk '/avg delay/ {n++; if (n==2) {print $3; exit}}' <<<"$out")
  result[$1]="$r $d1 $l1 $l2"
}
start_rollout; measure rollout
start_dnsmasq; measure dnsmasq

printf '\nDHCP bench: perfdhcp, %s DORA exchanges/s offered, %s distinct clients\n\n' "$rate" "$clients"
printf '%-9s %14s %14s %18s %18s\n' server "leases/s" "DISCOVER drop" "OFFER latency ms" "ACK latency ms"
for s in rollout dnsmasq; do
  read -r r d l1 l2 <<<"${result[$s]}"
  printf '%-9s %14s %13s%% %18s %18s\n' "$s" "$r" "$d" "$l1" "$l2"
done
read -r r1 _ a1 b1 <<<"${result[rollout]}"
read -r r2 _ a2 b2 <<<"${result[dnsmasq]}"
awk -v r1="$r1" -v r2="$r2" -v a1="$b1" -v a2="$b2" 'BEGIN {
  printf "\nratio rollout/dnsmasq: throughput %.2f, ACK latency %.3f\n", r1 / r2, a1 / a2 }'
