/* SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0 */
/*
 * The records the kernel side writes into the `events` ring buffer, and the keys and values of
 * the maps user space fills. sensor/src/raw.rs mirrors every struct here with #[repr(C)]; both
 * sides assert the same sizes, so a change here that is not mirrored fails to compile there.
 */
#ifndef GUARDLAB_H
#define GUARDLAB_H

/* Record kinds (ev_hdr.kind). */
#define EV_EXEC 1
#define EV_FORK 2
#define EV_EXIT 3
#define EV_CONNECT 4
#define EV_LISTEN 5
#define EV_ACCEPT 6
#define EV_DNS 7

/* exec_ev.h.flags */
#define EXEC_ARGS_TRUNCATED 1  /* argv was longer than ARGS_MAX bytes */
#define EXEC_PATH_TRUNCATED 2  /* the path did not fit, was too deep, or the walk ran out */
#define EXEC_KILLED 4          /* enforcement sent SIGKILL: the image never ran */
#define EXEC_PATH_FROM_FILENAME 8 /* dentry walk failed: path is bprm->filename as given */
#define EXEC_PATH_DETACHED 16  /* not reachable from the process's root (memfd, outside its
				* chroot): path is the file's name alone, e.g. "memfd:x" */
#define EXEC_KILL_FAILED 32    /* enforcement wanted a kill but bpf_send_signal failed */

/* dns_ev.h.flags */
#define DNS_TRUNCATED 1

/* Values of the `watched` map: what to do for a watched cgroup. */
#define WATCH_EXEC_ENFORCE 1    /* kill execs whose path is not in exec_allow */
#define WATCH_CONNECT_ENFORCE 2 /* refuse connect/sendmsg to destinations not in net_allow */
#define WATCH_TREE_ENFORCE 4    /* kill execs the process tree of exec_tree does not allow */
#define WATCH_DNS_ALLOW 8       /* DNS answers from the resolver for names in dns_names allow
				 * their addresses (dns_allow) before the answer reaches the pod */

#define PATH_MAX_LEN 256  /* resolved exe path, including the NUL */
#define PATH_BUF 512      /* twice PATH_MAX_LEN: lets the verifier prove every write in bounds */
#define PATH_DEPTH 32     /* path components followed from the file up to the root */
#define ARGS_MAX 1024     /* bytes of the argv block copied from the new image's stack */
#define DNS_MAX 4096      /* bytes of a DNS message copied (EDNS answers rarely exceed it) */
#define PORT_RANGES 16    /* port ranges per allowed network */
#define TREE_PATH 244     /* path bytes of an exec_tree key: an LPM key holds 256 data bytes */
#define DNS_NAME 248      /* name bytes of a dns_names key (the same limit) */

struct ev_hdr {
	__u32 kind;
	__u32 pid;        /* tgid in the host's pid namespace */
	__u64 ts;         /* CLOCK_BOOTTIME ns (bpf_ktime_get_boot_ns) */
	__u64 cgroup_id;  /* cgroup v2 id */
	__u64 start;      /* task_struct::start_boottime of the thread group leader */
	__u32 tid;
	__u32 flags;
};

struct exec_ev {
	struct ev_hdr h;
	__u32 ppid;
	__u32 ns_pid;
	__u64 pstart;
	__u32 uid;
	__u32 euid;
	__u32 gid;
	__u32 args_len;
	char comm[16];
	/* key_cgroup and path together are the exec_allow key (struct exec_allow_key). */
	__u64 key_cgroup;
	char path[PATH_BUF];
	char args[ARGS_MAX];
};

struct fork_ev {
	struct ev_hdr h;
	__u32 ppid;
	__u32 ns_pid;
	__u64 pstart;
	char comm[16];
};

struct exit_ev {
	struct ev_hdr h;
	__u32 exit_code; /* wait(2) status: signal in the low 7 bits, exit status in bits 8..15 */
	__u32 _pad;
};

/* connect, sendmsg, listen and accept. Addresses are IPv6 or IPv4-mapped IPv6. */
struct sock_ev {
	struct ev_hdr h;
	__u8 protocol;  /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 refused;
	__u16 lport;    /* host byte order; 0 when unknown */
	__u16 rport;
	__u16 _pad;
	__u8 laddr[16];
	__u8 raddr[16];
};

struct dns_ev {
	struct ev_hdr h;
	__u32 len;
	__u32 _pad;
	__u8 data[DNS_MAX];
};

struct exec_allow_key {
	__u64 cgroup_id;
	char path[PATH_MAX_LEN];
};

/* LPM trie key: cgroup id (always matched whole) then an IPv6 or IPv4-mapped address. */
struct net_allow_key {
	__u32 prefixlen; /* 64 + prefix length over the 128-bit address */
	__u8 cgroup_id[8];
	__u8 addr[16];
};

struct port_range {
	__u16 lo;
	__u16 hi;
};

struct net_allow_val {
	__u32 count;
	struct port_range ranges[PORT_RANGES];
};

struct listener_key {
	__u64 cgroup_id;
	__u32 port;
	__u32 _pad;
};

struct proc_key {
	__u32 pid;
	__u32 _pad;
	__u64 start;
};

/* A UDP socket's destination is reported once per verdict: a refusal after enforcement was
 * turned on is reported even when the same destination was allowed before. */
struct udp_seen_key {
	__u64 cookie;
	__u8 addr[16];
	__u32 port;
	__u32 refused;
};

/*
 * LPM trie key of exec_tree: (cgroup id, parent node) always matched whole, then the resolved
 * exe path, zero-padded. An exact path is an entry of its bytes and the NUL after them; a
 * `prefix*` glob is an entry of the prefix's bytes alone, so it also matches paths that did
 * not exist when the policy was set. The longest match wins: an exact path before a glob.
 */
struct exec_tree_key {
	__u32 prefixlen; /* 8 * (12 + matched path bytes) */
	__u8 cgroup_id[8];
	__u8 parent[4];
	char path[TREE_PATH];
};

/* Per task (BPF task storage): the policy node it runs as, in the cgroup it was given in. */
struct task_node {
	__u64 cgroup_id;
	__u32 node;
	__u32 _pad;
};

/*
 * LPM trie key of dns_names: cgroup id matched whole, then the lower-case name with its bytes
 * reversed ("moc.elpmaxe"), zero-padded. An exact name is an entry of its reversed bytes and
 * the NUL after them; `*.example.com` is an entry of "moc.elpmaxe." alone.
 */
struct dns_name_key {
	__u32 prefixlen; /* 8 * (8 + matched name bytes) */
	__u8 cgroup_id[8];
	char name[DNS_NAME];
};

/* Key of dns_allow: an address a DNS answer gave for an allowed name. */
struct dns_allow_key {
	__u64 cgroup_id;
	__u8 addr[16];
};

/* Value of `resolvers`: the pod's DNS server, reachable on port 53 whatever the policy says,
 * and the only source whose answers fill dns_allow. */
struct resolver {
	__u8 addr[16];
};

#endif
