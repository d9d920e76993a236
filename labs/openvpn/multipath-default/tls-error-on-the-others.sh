#!/bin/sh
# The clients' side of the "Round-robin default gateway" note (seed 003): the two clients
# whose replies come from another address than the one they dialled reject them, so their
# TLS handshake never completes: after hand-window (5 s here, the note's 60 s default) they
# log the note's lines and restart. Like one-answering-address.sh, it does not name which
# uplink wins (the multipath hash key is random before Linux 6.11): it checks what holds
# whichever it is:
#   - exactly one client connected, and it logs no TLS Error;
#   - each of the two others logs, in this order, the note's three lines
#       TLS Error: TLS key negotiation failed to occur within 5 seconds (check your network connectivity)
#       TLS Error: TLS handshake failed
#       SIGUSR1[soft,tls-error] received, process restarting
#     and never completes its handshake.
# Waits (up to 12 s) for the lines, prints only what does not depend on the winner, and
# what it found if the check fails (exit 1). Leaves tls-error-on-the-others.held when it held.
logs=../../logs
rm -f tls-error-on-the-others.held
deadline=$(( $(date +%s) + 12 ))
l1='TLS Error: TLS key negotiation failed to occur within 5 seconds (check your network connectivity)'
l2='TLS Error: TLS handshake failed'
l3='SIGUSR1[soft,tls-error] received, process restarting'

found() {
	echo "check failed: $1"
	for k in 1 2 3; do
		echo "client-gw$k (dialled 10.0.$k.2):"
		grep -E 'Initialization Sequence Completed|Incoming packet rejected|TLS Error|SIGUSR1' "$logs/client-gw$k.log" | sed 's/^[0-9-]* [0-9:]* //' | sort | uniq -c | sed 's/^/  /'
	done
	exit 1
}

# the note's three lines, in order, in a client's log (timestamps stripped)
has_lines() {
	sed 's/^[0-9-]* [0-9:]* //' "$logs/client-gw$1.log" | grep -x -F -e "$l1" -e "$l2" -e "$l3" | head -3 | tr '\n' '|'
}

while :; do
	won=""; lost=""; done_=0
	for k in 1 2 3; do
		if grep -q 'Initialization Sequence Completed' "$logs/client-gw$k.log"; then
			won="$won $k"
		else
			lost="$lost $k"
			[ "$(has_lines $k)" = "$l1|$l2|$l3|" ] && done_=$((done_ + 1))
		fi
	done
	[ "$(echo $won | wc -w)" -eq 1 ] || found "$(echo $won | wc -w) clients connected, expected exactly 1"
	[ "$done_" -eq 2 ] && break
	[ "$(date +%s)" -ge "$deadline" ] && found "the two other clients did not log the TLS errors within 12 s"
	sleep 0.1
done
w=$(echo $won)
grep -q 'TLS Error' "$logs/client-gw$w.log" && found "the connected client logged a TLS Error"
echo "the connected client: no TLS Error"
echo "each of the 2 others, after rejecting every reply (from the connected client's server address):"
echo "  <client>.log: $l1"
echo "  <client>.log: $l2"
echo "  <client>.log: $l3"
: > tls-error-on-the-others.held
