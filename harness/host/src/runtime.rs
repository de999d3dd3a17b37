//! The tokio runtime of guardlab's programs, built one way.

/// A multi-threaded runtime with `worker_threads` workers and every driver (I/O, time)
/// enabled: what the CLI, the lab daemon and the benchmarks run on.
pub fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads.max(1))
        .enable_all()
        .build()
}
