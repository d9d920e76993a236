#!/bin/sh
# Checks the fault of the "Round-robin default gateway" note on any kernel, without
# naming which uplink answers. Three clients on one address dial the server's three
# uplink addresses (client-gwK dials 10.0.K.2 from port 4000K). The server's UDP
# replies have no source address when they are routed; with
# fib_multipath_hash_policy=0 the hash covers (source 0.0.0.0, destination
# 203.0.113.10) only, so all three replies take the same nexthop and get its
# address. WHICH nexthop depends on the hash key: random per boot before Linux 6.11
# (and on later kernels unless net.ipv4.fib_multipath_hash_seed is set). So this
# script checks what holds whichever uplink wins:
#   - exactly one client connects, and the server logs exactly that client's peer;
#   - the other two log only rejections of replies from the address the connected
#     client dialled, each expecting the address it dialled itself;
#   - one second later it is still so.
# It prints only what does not depend on the winner, and what it found if the
# check fails (exit 1). Reads the daemons' logs in the work dir (../../logs); leaves
# one-answering-address.held when the check held.
logs=../../logs
rm -f one-answering-address.held
deadline=$(( $(date +%s) + 10 ))

count_state() {
	won=""; lost=""
	for k in 1 2 3; do
		if grep -q 'Initialization Sequence Completed' "$logs/client-gw$k.log"; then
			won="$won $k"
		elif grep -q 'Incoming packet rejected from' "$logs/client-gw$k.log"; then
			lost="$lost $k"
		fi
	done
	nwon=$(echo $won | wc -w); nlost=$(echo $lost | wc -w)
}

found() {
	echo "check failed: $1"
	for k in 1 2 3; do
		echo "client-gw$k (dialled 10.0.$k.2):"
		grep -E 'Initialization Sequence Completed|Incoming packet rejected' "$logs/client-gw$k.log" | sort | uniq -c | sed 's/^/  /'
	done
	echo "server:"
	grep 'Peer Connection Initiated' "$logs/server.log" | sed 's/^/  /'
	exit 1
}

# wait (up to 10 s) until every client has either connected or rejected a reply
while :; do
	count_state
	[ $((nwon + nlost)) -eq 3 ] && break
	[ "$(date +%s)" -ge "$deadline" ] && found "not every client connected or rejected a reply within 10 s"
	sleep 0.1
done

check() {
	count_state
	[ "$nwon" -eq 1 ] || found "$nwon clients connected, expected exactly 1"
	w=$(echo $won)
	grep -q 'Incoming packet rejected' "$logs/client-gw$w.log" && found "the connected client also rejected replies"
	for k in $lost; do
		want="TCP/UDP: Incoming packet rejected from [AF_INET]10.0.$w.2:1194[2], expected peer address: [AF_INET]10.0.$k.2:1194 (allow this incoming source address/port by removing --remote or adding --float)"
		other=$(grep 'Incoming packet rejected' "$logs/client-gw$k.log" | grep -v -F -- "$want")
		[ -z "$other" ] || found "client-gw$k rejected replies from another address"
	done
	peers=$(grep -c 'Peer Connection Initiated' "$logs/server.log")
	[ "$peers" -eq 1 ] || found "the server logs $peers peers, expected 1"
	grep -q "\[client$w\] Peer Connection Initiated with \[AF_INET\]203\.0\.113\.10:4000$w\$" "$logs/server.log" \
		|| found "the server's peer is not the connected client"
}

check
echo "1 of 3 clients connected: the one that dialled the address the replies come from"
echo "  <client>.log: Initialization Sequence Completed"
echo "  server.log: [client<N>] Peer Connection Initiated with [AF_INET]203.0.113.10:4000<N>"
echo "2 of 3 rejected every reply, which came from that same address:"
echo "  <client>.log: TCP/UDP: Incoming packet rejected from [AF_INET]<the connected client's server address>:1194[2], expected peer address: [AF_INET]<the address it dialled>:1194 (allow this incoming source address/port by removing --remote or adding --float)"
sleep 1
check
echo "1 s later: still only that one connected"
: > one-answering-address.held
