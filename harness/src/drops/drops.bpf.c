// SPDX-License-Identifier: GPL-2.0
// vpnlab's drop locator (harness/src/drops/mod.rs): on every `skb:kfree_skb` event whose skb
// belongs (by its device's, else its socket's, network namespace) to one of the lab's network
// namespaces, one record through a ring buffer: namespace, interface, reason, the freeing
// code's address and the first bytes from the IP header on. Compiled once by harness/build.rs
// (clang -target bpf); CO-RE: the kernel types below are minimal and marked
// preserve_access_index, so the loader moves every field to where the running kernel has it
// (from its BTF): no vmlinux.h, no kernel headers.
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define CORE __attribute__((preserve_access_index))

struct ns_common {
	unsigned int inum;
} CORE;

struct net {
	struct ns_common ns;
} CORE;

typedef struct {
	struct net *net;
} possible_net_t;

struct net_device {
	int ifindex;
	possible_net_t nd_net;
} CORE;

struct sock_common {
	possible_net_t skc_net;
} CORE;

struct sock {
	struct sock_common __sk_common;
} CORE;

struct sk_buff {
	struct net_device *dev;
	struct sock *sk;
	unsigned char *head;
	__u16 network_header;
} CORE;

struct trace_entry {
	unsigned short type;
} CORE;

enum skb_drop_reason { VPNLAB_REASON_ANY };

struct trace_event_raw_kfree_skb {
	struct trace_entry ent;
	void *skbaddr;
	void *location;
	unsigned short protocol;
	enum skb_drop_reason reason;
} CORE;

#define HEAD 128

// Keep in sync with `Raw` in mod.rs.
struct event {
	__u64 location;
	__u32 netns;
	__u32 ifindex;
	__u32 reason;
	__u16 protocol;
	__u16 captured;
	__u8 head[HEAD];
};

// The lab's network namespaces (inode numbers), filled by userspace before attaching.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u8);
} netns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
} events SEC(".maps");

static __always_inline __u32 net_inum(struct net *net)
{
	unsigned int inum = 0;
	if (net)
		bpf_probe_read_kernel(&inum, sizeof(inum), &net->ns.inum);
	return inum;
}

SEC("tracepoint/skb/kfree_skb")
int kfree_skb(struct trace_event_raw_kfree_skb *ctx)
{
	struct sk_buff *skb = ctx->skbaddr;
	struct net_device *dev = 0;
	struct sock *sk = 0;
	struct net *net = 0;
	__u32 ifindex = 0;

	bpf_probe_read_kernel(&dev, sizeof(dev), &skb->dev);
	if (dev) {
		bpf_probe_read_kernel(&net, sizeof(net), &dev->nd_net.net);
		bpf_probe_read_kernel(&ifindex, sizeof(ifindex), &dev->ifindex);
	} else {
		bpf_probe_read_kernel(&sk, sizeof(sk), &skb->sk);
		if (sk)
			bpf_probe_read_kernel(&net, sizeof(net), &sk->__sk_common.skc_net.net);
	}
	__u32 inum = net_inum(net);
	if (!inum || !bpf_map_lookup_elem(&netns, &inum))
		return 0;

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 0;
	e->location = (__u64)ctx->location;
	e->netns = inum;
	e->ifindex = ifindex;
	e->reason = (__u32)ctx->reason;
	e->protocol = ctx->protocol;
	unsigned char *head = 0;
	__u16 nh = 0;
	bpf_probe_read_kernel(&head, sizeof(head), &skb->head);
	bpf_probe_read_kernel(&nh, sizeof(nh), &skb->network_header);
	e->captured = HEAD;
	if (bpf_probe_read_kernel(e->head, HEAD, head + nh)) {
		// The buffer may end sooner: an IPv4 header and 8 bytes of what follows still tell.
		__builtin_memset(e->head, 0, HEAD);
		e->captured = 28;
		if (bpf_probe_read_kernel(e->head, 28, head + nh))
			e->captured = 0;
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
