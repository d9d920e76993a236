#!/bin/bash
# openvpn/missing-return-route::fix-gateway-route (prelude + steps) as a plain shell script, for
# `vpnlab bench`: the same topology with ip, the same PKI with openssl, the same openvpn configs,
# the same checks with ping -W1 (iputils' default 1 s interval). Run by the bench inside a
# private mount namespace (`unshare --mount`) so that the named namespaces never reach the host.
# $1: the lab's directory (its openvpn configs). Prints three nanosecond timestamps: start, the
# last check done, torn down.
set -euo pipefail
conf=$1
t0=$(date +%s%N)
mount -t tmpfs tmpfs /run
work=$(mktemp -d)
nodes="client wan server gateway upstream lanhost lan"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for n in $nodes; do ip netns del "vs-$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
for n in $nodes; do ip netns add "vs-$n"; ip -n "vs-$n" link set lo up; done
veth() { ip link add "$2" netns "vs-$1" type veth peer name "$4" netns "vs-$3"; }
veth client eth0 wan eth0
veth wan eth1 server eth0
veth gateway eth1 upstream eth0
veth server eth1 lan p0
veth gateway eth0 lan p1
veth lanhost eth0 lan p2
ip -n vs-lan link add br0 type bridge
ip -n vs-lan link set br0 up
for p in p0 p1 p2; do ip -n vs-lan link set "$p" master br0 up; done
addr() { ip -n "vs-$1" addr add "$3" dev "$2"; ip -n "vs-$1" link set "$2" up; }
addr client eth0 192.0.2.2/24
addr wan eth0 192.0.2.1/24
addr wan eth1 198.51.100.1/24
addr server eth0 198.51.100.10/24
addr gateway eth1 203.0.113.2/24
addr upstream eth0 203.0.113.1/24
addr server eth1 10.198.0.10/16
addr gateway eth0 10.198.0.1/16
addr lanhost eth0 10.198.1.12/16
for n in wan server gateway upstream; do ip netns exec "vs-$n" sysctl -qw net.ipv4.ip_forward=1; done
ip -n vs-client route add default via 192.0.2.1
ip -n vs-server route add default via 198.51.100.1
ip -n vs-gateway route add default via 203.0.113.1
ip -n vs-upstream route add 10.198.0.0/16 via 203.0.113.2
ip -n vs-lanhost route add default via 10.198.0.1
# PKI: a CA, server and client certificates (ECDSA P-256, with the right EKUs), a tls-auth key.
cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt -subj /CN=ca -days 2 2>/dev/null
for who in server client; do
  eku=clientAuth
  [ "$who" = server ] && eku=serverAuth
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$who.key" -out "$who.csr" -subj "/CN=$who" 2>/dev/null
  printf 'extendedKeyUsage=%s\nkeyUsage=digitalSignature,keyAgreement\n' "$eku" > "$who.ext"
  openssl x509 -req -in "$who.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$who.crt" -days 2 -extfile "$who.ext" 2>/dev/null
done
openvpn --genkey secret ta.key
cp "$conf/basic-udp-server.conf" "$conf/basic-udp-client.conf" .
start() { ip netns exec "vs-$1" openvpn --config "$2" > "$1.log" 2>&1 & pids+=($!); }
ready() { until grep -q "Initialization Sequence Completed" "$1.log"; do sleep 0.05; done; }
start server basic-udp-server.conf
ready server
start client basic-udp-client.conf
ready client
on() { ip netns exec "vs-$1" "${@:2}"; }
on client ping -c2 -W1 10.200.0.1 > /dev/null
on client ping -c2 -W1 10.198.0.10 > /dev/null
! on client ping -c2 -W1 10.198.0.1 > /dev/null
! on client ping -c2 -W1 10.198.1.12 > /dev/null
ip -n vs-gateway route > /dev/null
ip -n vs-gateway route add 10.200.0.0/24 via 10.198.0.10
on client ping -c2 -W1 10.198.0.1 > /dev/null
on client ping -c2 -W1 10.198.1.12 > /dev/null
t1=$(date +%s%N)
cd /
cleanup
trap - EXIT
t2=$(date +%s%N)
echo "$t0 $t1 $t2"
