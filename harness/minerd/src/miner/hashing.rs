//! The miner threads: each takes the current work, searches its nonces at idle priority,
//! reports its hash rate and submits the shares it finds, until the work moves or the run
//! stops.
#![allow(unsafe_code)] // setpriority(2): the miner threads run at idle priority

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::log::format_khash;
use super::{Shared, TICK, Work};
use crate::stratum::{Request, Submit, method};
use crate::work::NonceScanner;

/// Like cpuminer: miner threads run at nice 19 and, on Linux, SCHED_IDLE (SCHED_BATCH if
/// that is refused), so the miner takes only CPU nobody else wants.
fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread with a valid parameter struct.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
        }
    }
}

fn wait_for_work(shared: &Shared) -> Option<Arc<Work>> {
    let mut current = shared.work.lock().expect("work lock");
    loop {
        if shared.stopping() {
            return None;
        }
        if let Some(work) = current.as_ref() {
            return Some(work.clone());
        }
        current = shared
            .work_changed
            .wait_timeout(current, TICK)
            .expect("work lock")
            .0;
    }
}

/// Hashes between looks at the clock and at the current work.
const BATCH: u32 = 4096;

pub(super) fn miner_thread(shared: &Shared, id: usize) {
    lower_priority();
    while let Some(work) = wait_for_work(shared) {
        // Every piece of work gets its own extranonce2, hence its own coinbase and Merkle
        // root, so threads never search the same headers.
        let counter = shared.next_extranonce2.fetch_add(1, Ordering::SeqCst);
        let mut extranonce2 = vec![0u8; work.extranonce2_size];
        for (byte, value) in extranonce2.iter_mut().zip(counter.to_le_bytes()) {
            *byte = value;
        }
        let header = work
            .job
            .header(&work.extranonce1, &extranonce2, work.job.ntime, [0; 4]);
        let mut scanner = NonceScanner::new(&header);
        let mut nonce: u32 = 0;
        let mut meter_start = Instant::now();
        let mut meter_hashes: u64 = 0;
        'scan: loop {
            let mut found = None;
            let mut done = 0u32;
            while done < BATCH {
                let candidate = nonce;
                nonce = nonce.wrapping_add(1);
                done += 1;
                if work
                    .target
                    .is_met_by(&scanner.hash(candidate.to_be_bytes()))
                {
                    found = Some(candidate);
                    break;
                }
                if nonce == 0 {
                    break; // Nonce space exhausted.
                }
            }
            meter_hashes += u64::from(done);
            shared.hashes.fetch_add(u64::from(done), Ordering::Relaxed);
            let moved = shared.generation.load(Ordering::SeqCst) != work.generation;
            let exhausted = nonce == 0;
            let elapsed = meter_start.elapsed();
            if found.is_some() || moved || exhausted || elapsed >= shared.options.scan_time {
                report_hashrate(shared, id, meter_hashes, elapsed);
                meter_start = Instant::now();
                meter_hashes = 0;
            }
            if let Some(nonce) = found {
                submit_share(shared, &work, &extranonce2, nonce);
            }
            if moved || exhausted || shared.stopping() {
                break 'scan;
            }
        }
    }
}

fn report_hashrate(shared: &Shared, id: usize, hashes: u64, elapsed: Duration) {
    let rate = hashes as f64 / elapsed.as_secs_f64().max(1e-6);
    shared.hashrates.lock().expect("rates lock")[id] = rate;
    if !shared.options.quiet {
        shared.log(&format!(
            "thread {id}: {hashes} hashes, {} khash/s",
            format_khash(rate)
        ));
    }
}

fn submit_share(shared: &Shared, work: &Work, extranonce2: &[u8], nonce: u32) {
    let id = shared.next_submit_id.fetch_add(1, Ordering::SeqCst);
    let submit = Submit {
        worker: shared.options.user.clone(),
        job_id: work.job.job_id.clone(),
        extranonce2: hex::encode(extranonce2),
        ntime: hex::encode(work.job.ntime),
        nonce: hex::encode(nonce.to_be_bytes()),
    };
    shared.debug(&format!(
        "submitting job_id='{}' extranonce2={} nonce={}",
        submit.job_id, submit.extranonce2, submit.nonce
    ));
    shared
        .pending_submits
        .lock()
        .expect("pending lock")
        .insert(id);
    if shared
        .send(Request::call(id, method::SUBMIT, submit))
        .is_err()
    {
        // The connection is gone; the share is stale by the time it comes back.
        shared
            .pending_submits
            .lock()
            .expect("pending lock")
            .remove(&id);
        shared.log("submit_upstream_work stratum_send_line failed");
    }
}
