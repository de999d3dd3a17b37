//! guardlab's eBPF sensor (user space). The kernel side lives in `bpf/` as C.
pub use guardlab_events as events;
