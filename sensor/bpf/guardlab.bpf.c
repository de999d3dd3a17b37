// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
/*
 * guardlab's kernel side: process and network events of watched cgroups, plus the two
 * enforcement hooks (kill at exec, refuse connect/sendmsg). Only tracepoints, BTF tracepoints
 * and cgroup hooks: no kprobes, fentry or LSM (the machines this runs on do not have them).
 *
 * Host noise is dropped here, not in user space: every program first looks the cgroup up in
 * `watched`, so an unwatched process costs one hash lookup.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "guardlab.h"

#define AF_INET 2
#define AF_INET6 10
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define SIGKILL 9
#define SIGNAL_GROUP_EXIT 0x00000004
#define TCP_ESTABLISHED 1
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_LISTEN 10

/*
 * The layout of every struct raw.rs mirrors, pinned here (clang checks these lines) and read
 * by raw.rs's `layout_matches_the_c_side` test (which checks the Rust mirrors against the very
 * same lines). One LAYOUT or SIZE per line: the test parses them.
 */
#define LAYOUT(type, field, off) \
	_Static_assert(__builtin_offsetof(struct type, field) == off, #type "." #field)
#define SIZE(type, size) _Static_assert(sizeof(struct type) == size, #type)

SIZE(ev_hdr, 40);
LAYOUT(ev_hdr, kind, 0);
LAYOUT(ev_hdr, pid, 4);
LAYOUT(ev_hdr, ts, 8);
LAYOUT(ev_hdr, cgroup_id, 16);
LAYOUT(ev_hdr, start, 24);
LAYOUT(ev_hdr, tid, 32);
LAYOUT(ev_hdr, flags, 36);
SIZE(exec_ev, 1632);
LAYOUT(exec_ev, h, 0);
LAYOUT(exec_ev, ppid, 40);
LAYOUT(exec_ev, ns_pid, 44);
LAYOUT(exec_ev, pstart, 48);
LAYOUT(exec_ev, uid, 56);
LAYOUT(exec_ev, euid, 60);
LAYOUT(exec_ev, gid, 64);
LAYOUT(exec_ev, args_len, 68);
LAYOUT(exec_ev, comm, 72);
LAYOUT(exec_ev, key_cgroup, 88);
LAYOUT(exec_ev, path, 96);
LAYOUT(exec_ev, args, 608);
SIZE(fork_ev, 72);
LAYOUT(fork_ev, h, 0);
LAYOUT(fork_ev, ppid, 40);
LAYOUT(fork_ev, ns_pid, 44);
LAYOUT(fork_ev, pstart, 48);
LAYOUT(fork_ev, comm, 56);
SIZE(exit_ev, 48);
LAYOUT(exit_ev, h, 0);
LAYOUT(exit_ev, exit_code, 40);
LAYOUT(exit_ev, _pad, 44);
SIZE(sock_ev, 80);
LAYOUT(sock_ev, h, 0);
LAYOUT(sock_ev, protocol, 40);
LAYOUT(sock_ev, refused, 41);
LAYOUT(sock_ev, lport, 42);
LAYOUT(sock_ev, rport, 44);
LAYOUT(sock_ev, _pad, 46);
LAYOUT(sock_ev, laddr, 48);
LAYOUT(sock_ev, raddr, 64);
SIZE(dns_ev, 4144);
LAYOUT(dns_ev, h, 0);
LAYOUT(dns_ev, len, 40);
LAYOUT(dns_ev, _pad, 44);
LAYOUT(dns_ev, data, 48);
SIZE(exec_allow_key, 264);
LAYOUT(exec_allow_key, cgroup_id, 0);
LAYOUT(exec_allow_key, path, 8);
SIZE(net_allow_key, 28);
LAYOUT(net_allow_key, prefixlen, 0);
LAYOUT(net_allow_key, cgroup_id, 4);
LAYOUT(net_allow_key, addr, 12);
SIZE(port_range, 4);
LAYOUT(port_range, lo, 0);
LAYOUT(port_range, hi, 2);
SIZE(net_allow_val, 68);
LAYOUT(net_allow_val, count, 0);
LAYOUT(net_allow_val, ranges, 4);
SIZE(listener_key, 16);
LAYOUT(listener_key, cgroup_id, 0);
LAYOUT(listener_key, port, 8);
LAYOUT(listener_key, _pad, 12);
SIZE(proc_key, 16);
LAYOUT(proc_key, pid, 0);
LAYOUT(proc_key, _pad, 4);
LAYOUT(proc_key, start, 8);
SIZE(exec_tree_key, 260);
LAYOUT(exec_tree_key, prefixlen, 0);
LAYOUT(exec_tree_key, cgroup_id, 4);
LAYOUT(exec_tree_key, parent, 12);
LAYOUT(exec_tree_key, path, 16);
SIZE(dns_name_key, 260);
LAYOUT(dns_name_key, prefixlen, 0);
LAYOUT(dns_name_key, cgroup_id, 4);
LAYOUT(dns_name_key, name, 12);
SIZE(dns_allow_key, 24);
LAYOUT(dns_allow_key, cgroup_id, 0);
LAYOUT(dns_allow_key, addr, 8);
SIZE(resolver, 16);
LAYOUT(resolver, addr, 0);
_Static_assert(__builtin_offsetof(struct exec_ev, path) ==
		       __builtin_offsetof(struct exec_ev, key_cgroup) + 8,
	       "key_cgroup and path must be contiguous: they are the exec_allow key");

/* User space sets max_entries (a power of two multiple of the page size). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 23);
} events SEC(".maps");

/* Records that did not fit in the ring buffer, per CPU; user space turns them into `lost`. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

/* Execs enforcement meant to kill where bpf_send_signal failed, per CPU (user space exports
 * the sum: a kill that did not happen must not go unnoticed). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} kill_failures SEC(".maps");

/* cgroup id -> WATCH_* flags. Only cgroups in here produce events. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u32);
} watched SEC(".maps");

/* (cgroup id, resolved exe path) of the executables a cgroup may run under WATCH_EXEC_ENFORCE. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct exec_allow_key);
	__type(value, __u8);
} exec_allow SEC(".maps");

/*
 * (cgroup id, network) -> allowed port ranges under WATCH_CONNECT_ENFORCE. User space copies
 * the ranges of every shorter covering prefix into each entry, so the longest match alone
 * decides.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct net_allow_key);
	__type(value, struct net_allow_val);
} net_allow SEC(".maps");

/*
 * (socket cgroup, port) of a listening TCP socket -> the process that called listen(). Entries
 * go when the listener closes (whether or not its cgroup is still watched) and when user space
 * unwatches the cgroup; LRU so that anything missed (a listener closed while its close
 * tracepoint was not attached) is evicted rather than filling the map.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct listener_key);
	__type(value, struct proc_key);
} listeners SEC(".maps");

/* UDP sendmsg reports a destination once per socket and verdict, not once per datagram. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct udp_seen_key);
	__type(value, __u8);
} udp_seen SEC(".maps");

/*
 * (cgroup id, parent node, exe path) -> the node an exec becomes under WATCH_TREE_ENFORCE
 * (struct exec_tree_key says how exact paths and `prefix*` globs are keyed). Node 0 is the
 * container's root context: a task of the cgroup that no allowed exec has given a node yet.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct exec_tree_key);
	__type(value, __u32);
} exec_tree SEC(".maps");

/* Each task's policy node; threads and children inherit it at fork, an allowed exec moves it. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_node);
} task_nodes SEC(".maps");

/* (cgroup id, DNS name) -> the ports its addresses may be reached on, under WATCH_DNS_ALLOW.
 * User space copies the ports of every covering `*.` entry into longer ones, as for net_allow. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dns_name_key);
	__type(value, struct net_allow_val);
} dns_names SEC(".maps");

/* (cgroup id, address) -> ports: what answers for allowed names gave. LRU: a pod resolving
 * ever new names cannot fill it; user space removes a cgroup's entries when it lifts them. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct dns_allow_key);
	__type(value, struct net_allow_val);
} dns_allow SEC(".maps");

/* cgroup id -> its pod's resolver (always reachable on port 53 under WATCH_CONNECT_ENFORCE). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct resolver);
} resolvers SEC(".maps");

struct exec_scratch {
	struct exec_ev ev;
	__u64 dents[PATH_DEPTH];
};

/* exec_tree's key, too big for the stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_tree_key);
} tree_key_scratch SEC(".maps");

/* An exec record is too big for the 512-byte stack: it is built here, then copied out. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_scratch);
} exec_scratch SEC(".maps");

/* A mask the compiler cannot drop: the verifier needs to see it to bound a variable offset. */
#define MASK(v, m) ({ __u64 __v = (v); asm volatile("%0 &= " #m : "+r"(__v)); __v; })

static __always_inline void count(void *counter_map)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(counter_map, &zero);
	if (n)
		*n += 1;
}

static __always_inline void count_drop(void)
{
	count(&drops);
}

/*
 * Wake the reader only when a batch is waiting (an eighth of the ring): a wakeup per record
 * would cost the reader a context switch per exec. Below that, nothing wakes the reader: it
 * drains on a timer (SensorConfig::drain_interval, 10 ms), which bounds how late a lone
 * record arrives.
 */
static __always_inline __u64 wakeup_flags(void)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 size = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE);
	return avail >= size / 8 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

static __always_inline __u32 *watch_flags(__u64 cgroup_id)
{
	return bpf_map_lookup_elem(&watched, &cgroup_id);
}

static __always_inline void fill_hdr(struct ev_hdr *h, __u32 kind, __u64 cgroup_id,
				     struct task_struct *task)
{
	h->kind = kind;
	h->ts = bpf_ktime_get_boot_ns();
	h->cgroup_id = cgroup_id;
	h->flags = 0;
	if (task) {
		h->pid = BPF_CORE_READ(task, tgid);
		h->tid = BPF_CORE_READ(task, pid);
		h->start = BPF_CORE_READ(task, group_leader, start_boottime);
	} else {
		h->pid = 0;
		h->tid = 0;
		h->start = 0;
	}
}

static __always_inline __u32 ns_pid_of(struct task_struct *task)
{
	struct pid *pid = BPF_CORE_READ(task, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);
	struct upid upid = {};
	bpf_probe_read_kernel(&upid, sizeof(upid), &pid->numbers[level & 31]);
	return upid.nr;
}

/*
 * The executable's path as the exec'ing process sees it (like readlink /proc/PID/exe): follow
 * d_parent up to the root of each mount, hop to the mount point in the parent mount, and stop
 * at the process's root. Inside a container that is the container's root, so the path is the
 * one the image shows (/usr/bin/id), not the host's overlay path.
 *
 * A file that is not below the process's root has no such path: a memfd (memfd_create, then
 * execve of /proc/self/fd/N: "fileless" execution) lives on an internal mount whose top is
 * not the root, as does a file outside a chroot. The walk then ends at the top of a mount tree
 * without having met the root, and the record carries the file's name alone ("memfd:x")
 * flagged EXEC_PATH_DETACHED.
 *
 * Both loops run under bpf_loop: the verifier checks a callback once instead of every
 * unrolled path through a loop whose trip count it cannot know (that blew its 1M budget).
 * A callback sets `done` when it finished; a loop that ran out of iterations without it
 * leaves an incomplete path, flagged EXEC_PATH_TRUNCATED.
 */
struct walk_ctx {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	struct dentry *root_dentry;
	struct vfsmount *root_mnt;
	__u32 n;
	__u32 truncated;   /* deeper than PATH_DEPTH components */
	__u32 reached_root;
	__u32 done;
};

static long walk_step(__u64 index, struct walk_ctx *w)
{
	__u32 zero = 0;
	struct exec_scratch *s = bpf_map_lookup_elem(&exec_scratch, &zero);
	if (!s)
		return 1; /* not done: the caller treats the walk as failed */
	/* Plain locals: BPF_CORE_READ on w->field would ask for a CO-RE relocation of walk_ctx. */
	struct dentry *dentry = w->dentry;
	struct vfsmount *vfsmnt = w->vfsmnt;
	struct mount *mnt = w->mnt;
	if (dentry == w->root_dentry && vfsmnt == w->root_mnt) {
		w->reached_root = 1;
		w->done = 1;
		return 1;
	}
	struct dentry *mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	struct dentry *parent = BPF_CORE_READ(dentry, d_parent);
	if (dentry == mnt_root || dentry == parent) {
		struct mount *up = BPF_CORE_READ(mnt, mnt_parent);
		if (up == mnt || !up) {
			/* The top of a mount tree that does not hold the process's root. */
			w->done = 1;
			return 1;
		}
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = up;
		w->vfsmnt = &up->mnt;
		return 0;
	}
	if (w->n >= PATH_DEPTH) {
		w->truncated = 1;
		w->done = 1;
		return 1;
	}
	s->dents[MASK(w->n, 31)] = (__u64)dentry;
	w->n++;
	w->dentry = parent;
	return 0;
}

struct write_ctx {
	__u32 n;
	__u32 off;
	__u32 truncated;
	__u32 failed;
	__u32 done;
};

static long write_step(__u64 index, struct write_ctx *w)
{
	__u32 zero = 0;
	struct exec_scratch *s = bpf_map_lookup_elem(&exec_scratch, &zero);
	if (!s) {
		w->failed = 1;
		return 1;
	}
	if (index >= w->n) {
		w->done = 1;
		return 1;
	}
	if (w->off >= PATH_MAX_LEN - 1) {
		w->truncated = 1;
		w->done = 1;
		return 1;
	}
	/* Components were collected leaf first: write them root first. */
	struct dentry *d = (struct dentry *)s->dents[MASK(w->n - 1 - index, 31)];
	const unsigned char *name = BPF_CORE_READ(d, d_name.name);
	s->ev.path[MASK(w->off, 255)] = '/';
	w->off++;
	long r = bpf_probe_read_kernel_str(&s->ev.path[MASK(w->off, 255)], PATH_MAX_LEN, name);
	if (r <= 0) {
		w->failed = 1;
		return 1;
	}
	w->off += r - 1;
	return 0;
}

/*
 * Fills s->ev.path and its EXEC_PATH_* flags; false when it could not walk (the caller falls
 * back to bprm->filename).
 */
static __always_inline bool resolve_path(struct exec_scratch *s, struct task_struct *task,
					 struct file *file)
{
	struct dentry *leaf = BPF_CORE_READ(file, f_path.dentry);
	struct walk_ctx w = {
		.dentry = leaf,
		.vfsmnt = BPF_CORE_READ(file, f_path.mnt),
		.root_dentry = BPF_CORE_READ(task, fs, root.dentry),
		.root_mnt = BPF_CORE_READ(task, fs, root.mnt),
	};
	if (!w.dentry || !w.vfsmnt)
		return false;
	w.mnt = container_of(w.vfsmnt, struct mount, mnt);
	if (bpf_loop(PATH_DEPTH + 8, walk_step, &w, 0) < 0)
		return false;
	if (!w.done || w.truncated)
		s->ev.h.flags |= EXEC_PATH_TRUNCATED;
	if (w.done && !w.truncated && !w.reached_root) {
		/* Not reachable from the root: the name alone, like "memfd:x". */
		s->ev.h.flags |= EXEC_PATH_DETACHED;
		const unsigned char *name = BPF_CORE_READ(leaf, d_name.name);
		return bpf_probe_read_kernel_str(s->ev.path, PATH_MAX_LEN, name) > 0;
	}
	if (w.n == 0) {
		s->ev.path[0] = '/';
		return true;
	}
	struct write_ctx wr = {.n = w.n};
	if (bpf_loop(PATH_DEPTH, write_step, &wr, 0) < 0 || wr.failed)
		return false;
	if (!wr.done || wr.truncated || wr.off >= PATH_MAX_LEN)
		s->ev.h.flags |= EXEC_PATH_TRUNCATED;
	return true;
}

/* Flags that make the resolved path unfit to compare with an allow-list: enforcement kills. */
#define EXEC_PATH_UNTRUSTED (EXEC_PATH_TRUNCATED | EXEC_PATH_FROM_FILENAME | EXEC_PATH_DETACHED)

/*
 * Under WATCH_TREE_ENFORCE: may the current task, as the policy node it runs as, exec the
 * resolved path in s->ev.path? If so the task becomes the child node the policy names. A task
 * with no node in this cgroup (its first exec here, or a node given in another cgroup) is in
 * the container's root context, node 0. Untrusted paths never match.
 */
__noinline int tree_exec_allowed(__u64 cgroup_id)
{
	__u32 zero = 0;
	struct exec_scratch *s = bpf_map_lookup_elem(&exec_scratch, &zero);
	if (!s || (s->ev.h.flags & EXEC_PATH_UNTRUSTED))
		return false;
	struct task_struct *task = bpf_get_current_task_btf();
	__u32 parent = 0;
	struct task_node *tn = bpf_task_storage_get(&task_nodes, task, 0, 0);
	if (tn && tn->cgroup_id == cgroup_id)
		parent = tn->node;
	struct exec_tree_key *k = bpf_map_lookup_elem(&tree_key_scratch, &zero);
	if (!k)
		return false;
	k->prefixlen = 8 * (12 + TREE_PATH);
	__builtin_memcpy(k->cgroup_id, &cgroup_id, 8);
	__builtin_memcpy(k->parent, &parent, 4);
	__builtin_memcpy(k->path, s->ev.path, TREE_PATH);
	__u32 *child = bpf_map_lookup_elem(&exec_tree, k);
	if (!child)
		return false;
	__u32 node = *child;
	tn = bpf_task_storage_get(&task_nodes, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!tn)
		return false; /* the node could not be recorded: its children would be misjudged */
	tn->cgroup_id = cgroup_id;
	tn->node = node;
	tn->_pad = 0;
	return true;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(gl_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	__u64 cgroup_id = bpf_get_current_cgroup_id();
	__u32 *flags = watch_flags(cgroup_id);
	if (!flags)
		return 0;
	__u32 watch = *flags;

	__u32 zero = 0;
	struct exec_scratch *s = bpf_map_lookup_elem(&exec_scratch, &zero);
	if (!s)
		return 0;
	struct exec_ev *e = &s->ev;

	fill_hdr(&e->h, EV_EXEC, cgroup_id, task);
	struct task_struct *parent = BPF_CORE_READ(task, real_parent);
	e->ppid = BPF_CORE_READ(parent, tgid);
	e->pstart = BPF_CORE_READ(parent, group_leader, start_boottime);
	e->ns_pid = ns_pid_of(task);
	e->uid = BPF_CORE_READ(task, cred, uid.val);
	e->euid = BPF_CORE_READ(task, cred, euid.val);
	e->gid = BPF_CORE_READ(task, cred, gid.val);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->key_cgroup = cgroup_id;
	__builtin_memset(e->path, 0, sizeof(e->path));

	struct file *file = BPF_CORE_READ(bprm, file);
	if (!resolve_path(s, task, file)) {
		/* As given to execve: possibly relative, possibly a symlink. Never trusted by
		 * enforcement (EXEC_PATH_UNTRUSTED). */
		__builtin_memset(e->path, 0, sizeof(e->path));
		e->h.flags &= ~(EXEC_PATH_TRUNCATED | EXEC_PATH_DETACHED);
		e->h.flags |= EXEC_PATH_FROM_FILENAME;
		bpf_probe_read_kernel_str(e->path, PATH_MAX_LEN, BPF_CORE_READ(bprm, filename));
	}

	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	__u64 arg_start = BPF_CORE_READ(mm, arg_start);
	__u64 arg_end = BPF_CORE_READ(mm, arg_end);
	__u64 len = arg_end > arg_start ? arg_end - arg_start : 0;
	if (len > ARGS_MAX) {
		len = ARGS_MAX;
		e->h.flags |= EXEC_ARGS_TRUNCATED;
	}
	e->args_len = 0;
	if (len > 0 && bpf_probe_read_user(e->args, len, (void *)arg_start) == 0)
		e->args_len = len;

	/* Fail closed: a path that is incomplete, unresolved or detached cannot be shown to be
	 * on the allow-list, so it is killed like one that is not. */
	bool deny = (watch & WATCH_EXEC_ENFORCE) &&
		    ((e->h.flags & EXEC_PATH_UNTRUSTED) ||
		     !bpf_map_lookup_elem(&exec_allow, &e->key_cgroup));
	if ((watch & WATCH_TREE_ENFORCE) && !tree_exec_allowed(cgroup_id))
		deny = true;
	if (deny) {
		/* Pending SIGKILL is acted on before the return to user space: the new image never
		 * runs an instruction. */
		if (bpf_send_signal(SIGKILL) == 0) {
			e->h.flags |= EXEC_KILLED;
		} else {
			e->h.flags |= EXEC_KILL_FAILED;
			count(&kill_failures);
		}
	}

	__u32 args_len = e->args_len;
	if (args_len > ARGS_MAX)
		args_len = ARGS_MAX;
	__u64 size = __builtin_offsetof(struct exec_ev, args) + args_len;
	if (bpf_ringbuf_output(&events, e, size, wakeup_flags()))
		count_drop();
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(gl_fork, struct task_struct *parent, struct task_struct *child)
{
	__u64 cgroup_id = BPF_CORE_READ(child, cgroups, dfl_cgrp, kn, id);
	__u32 *flags = watch_flags(cgroup_id);
	if (!flags)
		return 0;
	/* Threads and processes both run as their parent's policy node until they exec. */
	if (*flags & WATCH_TREE_ENFORCE) {
		struct task_node *pn = bpf_task_storage_get(&task_nodes, parent, 0, 0);
		if (pn) {
			struct task_node *cn = bpf_task_storage_get(&task_nodes, child, 0,
								    BPF_LOCAL_STORAGE_GET_F_CREATE);
			if (cn) {
				cn->cgroup_id = pn->cgroup_id;
				cn->node = pn->node;
				cn->_pad = 0;
			}
		}
	}
	/* Threads share their process's identity: only new thread groups are processes. */
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid))
		return 0;
	struct fork_ev *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop();
		return 0;
	}
	fill_hdr(&e->h, EV_FORK, cgroup_id, child);
	struct task_struct *rp = BPF_CORE_READ(child, real_parent);
	e->ppid = BPF_CORE_READ(rp, tgid);
	e->pstart = BPF_CORE_READ(rp, group_leader, start_boottime);
	e->ns_pid = ns_pid_of(child);
	BPF_CORE_READ_STR_INTO(&e->comm, child, comm);
	bpf_ringbuf_submit(e, wakeup_flags());
	return 0;
}

static __always_inline void report_exit(struct task_struct *task, __u64 cgroup_id)
{
	struct exit_ev *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop();
		return;
	}
	fill_hdr(&e->h, EV_EXIT, cgroup_id, task);
	__u32 code = BPF_CORE_READ(task, exit_code);
	if (BPF_CORE_READ(task, signal, flags) & SIGNAL_GROUP_EXIT)
		code = BPF_CORE_READ(task, signal, group_exit_code);
	e->exit_code = code;
	e->_pad = 0;
	bpf_ringbuf_submit(e, wakeup_flags());
}

/*
 * Fires for every thread; the process ends with the last one. The tracepoint's group_dead says
 * which one that is: do_exit decrements signal->live with atomic_dec_and_test, so exactly one
 * thread sees true. (Reading signal->live here instead lets two threads exiting at once both
 * read 0: see gl_exit_live.)
 */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(gl_exit, struct task_struct *task, bool group_dead)
{
	if (!group_dead)
		return 0;
	__u64 cgroup_id = bpf_get_current_cgroup_id();
	if (!watch_flags(cgroup_id))
		return 0;
	report_exit(task, cgroup_id);
	return 0;
}

/* Processes whose exit gl_exit_live has reported (LRU: entries are never needed again). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct proc_key);
	__type(value, __u8);
} exit_claimed SEC(".maps");

/*
 * The same for kernels whose tracepoint does not pass group_dead (the verifier refuses gl_exit
 * there, and the loader takes this one). signal->live has reached 0 for the last thread, but
 * threads exiting at once may all read 0: the first to insert the process into exit_claimed
 * (BPF_NOEXIST is atomic) reports it.
 */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(gl_exit_live, struct task_struct *task)
{
	__u64 cgroup_id = bpf_get_current_cgroup_id();
	if (!watch_flags(cgroup_id))
		return 0;
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	struct proc_key key = {
		.pid = BPF_CORE_READ(task, tgid),
		.start = BPF_CORE_READ(task, group_leader, start_boottime),
	};
	__u8 one = 1;
	if (bpf_map_update_elem(&exit_claimed, &key, &one, BPF_NOEXIST))
		return 0;
	report_exit(task, cgroup_id);
	return 0;
}

static __always_inline void v4_mapped(__u8 *out, __u32 be_addr)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &be_addr, 4);
}

static __always_inline bool is_loopback(const __u8 *a)
{
	bool v4mapped = true;
	for (int i = 0; i < 10; i++)
		if (a[i])
			v4mapped = false;
	if (v4mapped && a[10] == 0xff && a[11] == 0xff)
		return a[12] == 127;
	for (int i = 0; i < 15; i++)
		if (a[i])
			return false;
	return a[15] == 1; /* ::1 */
}

static __always_inline bool same_addr(const __u8 *a, const __u8 *b)
{
	for (int i = 0; i < 16; i++)
		if (a[i] != b[i])
			return false;
	return true;
}

static __always_inline bool port_in(const struct net_allow_val *v, __u16 port)
{
	for (int i = 0; i < PORT_RANGES; i++) {
		if (i >= v->count)
			break;
		if (port >= v->ranges[i].lo && port <= v->ranges[i].hi)
			return true;
	}
	return false;
}

static __always_inline bool destination_allowed(__u64 cgroup_id, const __u8 *addr, __u16 port)
{
	struct net_allow_key key = {.prefixlen = 64 + 128};
	__builtin_memcpy(key.cgroup_id, &cgroup_id, 8);
	__builtin_memcpy(key.addr, addr, 16);
	struct net_allow_val *v = bpf_map_lookup_elem(&net_allow, &key);
	if (v && port_in(v, port))
		return true;
	/* The pod's resolver, whatever the policy says about DNS. */
	if (port == 53) {
		struct resolver *r = bpf_map_lookup_elem(&resolvers, &cgroup_id);
		if (r && same_addr(r->addr, addr))
			return true;
	}
	struct dns_allow_key dk = {.cgroup_id = cgroup_id};
	__builtin_memcpy(dk.addr, addr, 16);
	v = bpf_map_lookup_elem(&dns_allow, &dk);
	return v && port_in(v, port);
}

/* Shared by connect4/6 and sendmsg4/6: report, and decide under WATCH_CONNECT_ENFORCE. */
static __always_inline int on_sock_addr(struct bpf_sock_addr *ctx, bool v6, bool sendmsg)
{
	__u32 protocol = ctx->protocol;
	if (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP)
		return 1;
	__u64 cgroup_id = bpf_get_current_cgroup_id();
	__u32 *flags = watch_flags(cgroup_id);
	if (!flags)
		return 1;
	__u32 watch = *flags;

	__u8 addr[16];
	if (v6) {
		__u32 a[4];
		a[0] = ctx->user_ip6[0];
		a[1] = ctx->user_ip6[1];
		a[2] = ctx->user_ip6[2];
		a[3] = ctx->user_ip6[3];
		__builtin_memcpy(addr, a, 16);
	} else {
		v4_mapped(addr, ctx->user_ip4);
	}
	__u16 port = bpf_ntohs(ctx->user_port);

	int verdict = 1;
	if ((watch & WATCH_CONNECT_ENFORCE) && !is_loopback(addr) &&
	    !destination_allowed(cgroup_id, addr, port))
		verdict = 0; /* the caller sees EPERM */

	if (sendmsg) {
		struct udp_seen_key seen = {
			.cookie = bpf_get_socket_cookie(ctx),
			.port = port,
			.refused = verdict == 0,
		};
		__builtin_memcpy(seen.addr, addr, 16);
		if (bpf_map_lookup_elem(&udp_seen, &seen))
			return verdict;
		__u8 one = 1;
		bpf_map_update_elem(&udp_seen, &seen, &one, BPF_ANY);
	}

	struct sock_ev *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop();
		return verdict;
	}
	fill_hdr(&e->h, EV_CONNECT, cgroup_id, (struct task_struct *)bpf_get_current_task());
	e->protocol = protocol;
	e->refused = verdict == 0;
	e->lport = 0;
	e->rport = port;
	e->_pad = 0;
	__builtin_memset(e->laddr, 0, 16);
	__builtin_memcpy(e->raddr, addr, 16);
	bpf_ringbuf_submit(e, wakeup_flags());
	return verdict;
}

SEC("cgroup/connect4")
int gl_connect4(struct bpf_sock_addr *ctx)
{
	return on_sock_addr(ctx, false, false);
}

SEC("cgroup/connect6")
int gl_connect6(struct bpf_sock_addr *ctx)
{
	return on_sock_addr(ctx, true, false);
}

SEC("cgroup/sendmsg4")
int gl_sendmsg4(struct bpf_sock_addr *ctx)
{
	return on_sock_addr(ctx, false, true);
}

SEC("cgroup/sendmsg6")
int gl_sendmsg6(struct bpf_sock_addr *ctx)
{
	return on_sock_addr(ctx, true, true);
}

/*
 * Listening sockets and accepted connections. TCP_LISTEN is reached inside listen(), so the
 * current process owns the socket; it is remembered per (socket cgroup, port). The final ACK
 * that moves a connection from SYN_RECV to ESTABLISHED arrives in softirq context, where
 * "current" is whoever was interrupted, so an accepted connection is attributed to the process
 * that called listen() on that port in that cgroup (the accepted socket inherits the listener's
 * cgroup). A listener opened before the cgroup was watched has no owner: pid 0.
 *
 * A BTF tracepoint (the raw tracepoint with typed arguments), not the classic one: attaching
 * it needs no tracefs, which a fresh host (and a kind node's sensor pod) does not mount. The
 * fields the classic tracepoint copied out are read from the socket the same way it did:
 * local port from inet_sport (set by bind(), before listen() and on accepted sockets), the
 * peer's from skc_dport, addresses from inet_saddr and the socket's common part.
 */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(gl_sock_state, struct sock *sk, int oldstate, int newstate)
{
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	bool listen = newstate == TCP_LISTEN;
	bool unlisten = oldstate == TCP_LISTEN && newstate == TCP_CLOSE;
	bool accept = oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED;
	if (!listen && !unlisten && !accept)
		return 0;

	struct inet_sock *inet = (struct inet_sock *)sk;
	__u16 sport_be = BPF_CORE_READ(inet, inet_sport);
	__u16 sport = bpf_ntohs(sport_be);
	__u64 cgroup_id = BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);
	struct listener_key lk = {.cgroup_id = cgroup_id, .port = sport};
	if (unlisten) {
		/* Before the watched check: the cgroup may have been unwatched since listen(). */
		bpf_map_delete_elem(&listeners, &lk);
		return 0;
	}
	if (!watch_flags(cgroup_id))
		return 0;

	struct sock_ev *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop();
		return 0;
	}
	if (listen) {
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();
		fill_hdr(&e->h, EV_LISTEN, cgroup_id, task);
		struct proc_key owner = {.pid = e->h.pid, .start = e->h.start};
		bpf_map_update_elem(&listeners, &lk, &owner, BPF_ANY);
	} else {
		fill_hdr(&e->h, EV_ACCEPT, cgroup_id, NULL);
		struct proc_key *owner = bpf_map_lookup_elem(&listeners, &lk);
		if (owner) {
			e->h.pid = owner->pid;
			e->h.start = owner->start;
		}
	}
	e->protocol = IPPROTO_TCP;
	e->refused = 0;
	e->lport = sport;
	__u16 dport = BPF_CORE_READ(sk, __sk_common.skc_dport);
	e->rport = bpf_ntohs(dport);
	e->_pad = 0;
	if (BPF_CORE_READ(sk, __sk_common.skc_family) == AF_INET) {
		v4_mapped(e->laddr, BPF_CORE_READ(inet, inet_saddr));
		v4_mapped(e->raddr, BPF_CORE_READ(sk, __sk_common.skc_daddr));
	} else {
		BPF_CORE_READ_INTO(&e->laddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&e->raddr, sk, __sk_common.skc_v6_daddr);
	}
	bpf_ringbuf_submit(e, wakeup_flags());
	return 0;
}

/*
 * Under WATCH_DNS_ALLOW: an answer from the cgroup's resolver to a question for a name in
 * dns_names adds its A/AAAA addresses to dns_allow, with that name's ports. This runs when the
 * datagram is delivered to the socket, before the application can read it: a connect right
 * after the lookup finds the addresses allowed. Only UDP answers are read (a lookup over TCP
 * allows nothing), and an address stays allowed while the policy is (TTLs are not followed).
 */
struct dns_scratch {
	__u8 msg[DNS_MAX + 64]; /* slack: reads at a masked offset plus a few bytes stay inside */
	char name[256];
	struct dns_name_key key;
	struct net_allow_val ports;
	/*
	 * The parse's state lives here, not in a loop context on the stack: the verifier does
	 * not track values read from a map, so each step is checked once instead of once per
	 * distinct offset (which ran past its budget).
	 */
	__u64 cgroup_id;
	__u32 off;     /* next byte of the message */
	__u32 len;     /* bytes of the message copied */
	__u32 left;    /* question: bytes left in the label; answers: records left */
	__u32 n;       /* bytes of the name written */
	__u32 done;
	__u32 in_name; /* reading a record's owner name (else its fixed part) */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dns_scratch);
} dns_scratch SEC(".maps");

/* One byte of the question's name per step: lower-cased labels joined with dots. */
static long qname_step(__u64 index, void *unused)
{
	__u32 zero = 0;
	struct dns_scratch *s = bpf_map_lookup_elem(&dns_scratch, &zero);
	if (!s || s->off >= s->len)
		return 1;
	__u8 b = s->msg[MASK(s->off, 4095)];
	s->off++;
	if (s->left == 0) {
		if (b == 0) {
			s->done = 1;
			return 1;
		}
		if (b > 63) /* a compression pointer has no place in a question */
			return 1;
		if (s->n > 0) {
			if (s->n >= DNS_NAME - 1)
				return 1;
			s->name[MASK(s->n, 255)] = '.';
			s->n++;
		}
		s->left = b;
		return 0;
	}
	/* A dot or NUL inside a label would make its name read as another one. */
	if (b == '.' || b == 0 || s->n >= DNS_NAME - 1)
		return 1;
	if (b >= 'A' && b <= 'Z')
		b += 'a' - 'A';
	s->name[MASK(s->n, 255)] = b;
	s->n++;
	s->left--;
	return 0;
}

/* The name's bytes reversed into the dns_names key, one per step. */
static long rev_step(__u64 index, void *unused)
{
	__u32 zero = 0;
	struct dns_scratch *s = bpf_map_lookup_elem(&dns_scratch, &zero);
	if (!s || index >= s->n)
		return 1;
	s->key.name[MASK(s->n - 1 - index, 255)] = s->name[MASK(index, 255)];
	return 0;
}

/* One label of an owner name, or one record's fixed part and data, per step. */
static long answer_step(__u64 index, void *unused)
{
	__u32 zero = 0;
	struct dns_scratch *s = bpf_map_lookup_elem(&dns_scratch, &zero);
	if (!s || s->left == 0 || s->off + 10 > s->len)
		return 1;
	__u32 o = MASK(s->off, 4095);
	if (s->in_name) {
		__u8 b = s->msg[o];
		if ((b & 0xc0) == 0xc0) {
			s->off += 2;
			s->in_name = 0;
		} else if (b == 0) {
			s->off += 1;
			s->in_name = 0;
		} else if (b > 63) {
			return 1;
		} else {
			s->off += 1 + b;
		}
		return 0;
	}
	__u16 type = ((__u16)s->msg[o] << 8) | s->msg[o + 1];
	__u16 class = ((__u16)s->msg[o + 2] << 8) | s->msg[o + 3];
	__u16 rdlen = ((__u16)s->msg[o + 8] << 8) | s->msg[o + 9];
	__u32 rd = s->off + 10;
	if (rd + rdlen > s->len)
		return 1;
	struct dns_allow_key key = {.cgroup_id = s->cgroup_id};
	__u32 r = MASK(rd, 4095);
	bool found = true;
	if (class == 1 && type == 1 && rdlen == 4) {
		__u32 v4;
		__builtin_memcpy(&v4, &s->msg[r], 4);
		v4_mapped(key.addr, v4);
	} else if (class == 1 && type == 28 && rdlen == 16) {
		__builtin_memcpy(key.addr, &s->msg[r], 16);
	} else {
		found = false;
	}
	if (found)
		bpf_map_update_elem(&dns_allow, &key, &s->ports, BPF_ANY);
	s->off = rd + rdlen;
	s->in_name = 1;
	s->left--;
	return 0;
}

static __always_inline void allow_answer(struct __sk_buff *skb, __u32 l4off, __u64 cgroup_id)
{
	struct resolver *r = bpf_map_lookup_elem(&resolvers, &cgroup_id);
	if (!r)
		return;
	__u8 src[16];
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u32 v4;
		if (bpf_skb_load_bytes(skb, 12, &v4, 4))
			return;
		v4_mapped(src, v4);
	} else if (bpf_skb_load_bytes(skb, 8, src, 16)) {
		return;
	}
	if (!same_addr(src, r->addr))
		return;
	if (skb->len <= l4off + 8 + 12)
		return;
	__u32 len = skb->len - l4off - 8;
	if (len > DNS_MAX)
		len = DNS_MAX;
	len = MASK(len - 1, 4095) + 1;
	__u32 zero = 0;
	struct dns_scratch *s = bpf_map_lookup_elem(&dns_scratch, &zero);
	if (!s || bpf_skb_load_bytes(skb, l4off + 8, s->msg, len))
		return;
	/* A response, no error, one question. */
	if (!(s->msg[2] & 0x80) || (s->msg[3] & 0x0f) || s->msg[4] != 0 || s->msg[5] != 1)
		return;
	__u32 answers = ((__u32)s->msg[6] << 8) | s->msg[7];
	if (answers == 0)
		return;

	s->cgroup_id = cgroup_id;
	s->off = 12;
	s->len = len;
	s->left = 0;
	s->n = 0;
	s->done = 0;
	if (bpf_loop(256, qname_step, NULL, 0) < 0 || !s->done || s->n == 0)
		return;
	__builtin_memset(&s->key, 0, sizeof(s->key));
	s->key.prefixlen = 8 * (8 + DNS_NAME);
	__builtin_memcpy(s->key.cgroup_id, &cgroup_id, 8);
	if (bpf_loop(DNS_NAME, rev_step, NULL, 0) < 0)
		return;
	struct net_allow_val *ports = bpf_map_lookup_elem(&dns_names, &s->key);
	if (!ports)
		return;
	__builtin_memcpy(&s->ports, ports, sizeof(s->ports));

	s->off += 4; /* past QTYPE and QCLASS */
	s->left = answers;
	s->in_name = 1;
	bpf_loop(1024, answer_step, NULL, 0);
}

/*
 * DNS answers: UDP datagrams from port 53 delivered to a socket of a watched cgroup. The
 * message is copied whole (up to DNS_MAX) and parsed in user space.
 */
SEC("cgroup_skb/ingress")
int gl_dns_ingress(struct __sk_buff *skb)
{
	__u32 l4off;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 vihl, proto;
		__u16 frag;
		if (bpf_skb_load_bytes(skb, 0, &vihl, 1) || bpf_skb_load_bytes(skb, 9, &proto, 1) ||
		    bpf_skb_load_bytes(skb, 6, &frag, 2))
			return 1;
		if (proto != IPPROTO_UDP || (bpf_ntohs(frag) & 0x3fff))
			return 1;
		l4off = (vihl & 0x0f) * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		__u8 next;
		if (bpf_skb_load_bytes(skb, 6, &next, 1) || next != IPPROTO_UDP)
			return 1;
		l4off = 40;
	} else {
		return 1;
	}
	__u16 sport;
	if (bpf_skb_load_bytes(skb, l4off, &sport, 2) || sport != bpf_htons(53))
		return 1;
	__u64 cgroup_id = bpf_skb_cgroup_id(skb);
	__u32 *flags = watch_flags(cgroup_id);
	if (!flags)
		return 1;
	if (*flags & WATCH_DNS_ALLOW)
		allow_answer(skb, l4off, cgroup_id);
	if (skb->len <= l4off + 8)
		return 1;
	__u32 len = skb->len - l4off - 8;

	struct dns_ev *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop();
		return 1;
	}
	fill_hdr(&e->h, EV_DNS, cgroup_id, NULL);
	if (len > DNS_MAX) {
		len = DNS_MAX;
		e->h.flags |= DNS_TRUNCATED;
	}
	/* len is 1..DNS_MAX; written so that the verifier sees those bounds. */
	_Static_assert(DNS_MAX == 4096, "the mask below is DNS_MAX - 1");
	len = MASK(len - 1, 4095) + 1;
	e->_pad = 0;
	e->len = 0;
	if (bpf_skb_load_bytes(skb, l4off + 8, e->data, len) == 0)
		e->len = len;
	bpf_ringbuf_submit(e, wakeup_flags());
	return 1;
}

/*
 * Names the ring buffer's records in the object's BTF. clang writes BTF only for the types
 * that functions, globals and maps name; these records are only ever pointed to by local
 * variables, so without this function their layouts would not be in the object, and
 * tests/bpf_object.rs, which compares an object built by another clang with the committed one
 * through BTF, could not compare them (exec_ev and the map keys and values are named by maps).
 * Never called, so never loaded: aya puts a .text function only into the programs that call it.
 */
__attribute__((noinline, used)) int gl_record_types(struct fork_ev *fork, struct exit_ev *exit,
						    struct sock_ev *sock, struct dns_ev *dns)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
