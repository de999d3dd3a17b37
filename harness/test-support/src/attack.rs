//! Streams an attacker who controls the notebook pod can make, to test and benchmark that the
//! engine's state and output stay bounded: a deep chain of nested shells, one process that execs
//! again and again, an exec storm, a flood of connections, thousands of DNS names, and megabytes
//! of one repeated event.
//!
//! Each attack runs in the tutorial's notebook pod ([`crate::notebook`], the `REPLAY` run): the
//! pod starts, the baseline cells run, a terminal opens, and the attack is typed into its shell.
//! A policy learned from [`baseline`] (the `FIRST` run) allows the baseline and nothing of the
//! attack. Everything is generated from fixed values, so two calls give the same events.
//!
//! Arguments are cut as the sensor cuts them (1 KiB in all, `argv_truncated` set), so a deep
//! chain of `sh -c 'sh -c ...'` is as large on the wire as a real recording of it.

use guardlab_events::{Event, EventBody, ProcessKey, Protocol};

use crate::notebook::{self, CG, FIRST, Notebook, POD_IP, REPLAY};
use crate::stream::prog;

/// The bytes of argv the sensor copies (NULs included).
pub const ARGV_BYTES: usize = 1024;

/// One attack input: a name for reports, and its events in time order.
pub struct Attack {
    pub name: String,
    pub events: Vec<Event>,
}

/// The notebook's baseline (the `FIRST` run), to learn the policy the attacks deviate from.
pub fn baseline() -> Vec<Event> {
    notebook::baseline(&FIRST).s.events
}

/// The notebook pod up to an open terminal (the `REPLAY` run); the attack goes on from there.
fn terminal() -> (Notebook, ProcessKey) {
    let mut nb = notebook::baseline(&REPLAY);
    let bash = nb.terminal();
    (nb, bash)
}

/// argv as the sensor reports it: what fits in [`ARGV_BYTES`] (each argument with its NUL), the
/// last argument cut short, and whether anything was cut.
fn sensor_argv(argv: &[String]) -> (Vec<String>, bool) {
    let mut left = ARGV_BYTES;
    let mut out = Vec::new();
    for arg in argv {
        if left == 0 {
            return (out, true);
        }
        if arg.len() < left {
            left -= arg.len() + 1;
            out.push(arg.clone());
        } else {
            let mut cut = left - 1;
            while !arg.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push(arg[..cut].to_string());
            return (out, true);
        }
    }
    (out, false)
}

/// Set the last event's argv (an exec) to `argv` as the sensor would report it.
fn set_last_argv(nb: &mut Notebook, argv: &[String]) {
    let (argv, truncated) = sensor_argv(argv);
    match nb.s.events.last_mut().map(|e| &mut e.body) {
        Some(EventBody::Exec(exec)) => {
            exec.argv = argv;
            exec.argv_truncated = truncated;
        }
        _ => unreachable!("set right after an exec"),
    }
}

/// The command line of a chain of `depth` nested shells: `sh -c 'sh -c ... true'`, each level
/// quoting the next one ('\'' for a quote inside quotes, as a person types it).
fn nested_command(depth: usize) -> String {
    let mut cmd = String::from("true");
    for _ in 0..depth {
        cmd = format!("sh -c '{}'", cmd.replace('\'', r"'\''"));
    }
    cmd
}

/// `sh -c 'sh -c ...'` typed into the terminal: `depth` shells, each the child of the one
/// before, each forked and exec'd; the innermost runs `true`, then they exit innermost first.
/// A command line is cut at 1 KiB as the sensor cuts it; eight levels of quoting already make the
/// first kilobyte, so deeper levels are not built.
pub fn deep_fork_chain(depth: usize) -> Attack {
    let (mut nb, bash) = terminal();
    let dash = "/usr/bin/dash";
    let mut parent = bash;
    let mut chain = Vec::with_capacity(depth);
    for level in 0..depth {
        let rest = depth - level - 1;
        // What this shell runs: the next level's command line, or `true` at the bottom. Every
        // level of quoting triples the quotes, so eight levels already fill the kilobyte the
        // sensor copies: the first kilobyte of a deeper command is the same.
        let inner = if rest == 0 {
            "true".to_string()
        } else {
            nested_command(rest.min(8))
        };
        let argv = ["sh".to_string(), "-c".to_string(), inner];
        let key = nb.s.spawn(CG, Some(parent), prog(dash, &["sh"], "jovyan"));
        set_last_argv(&mut nb, &argv);
        chain.push(key);
        parent = key;
    }
    let t =
        nb.s.spawn(CG, Some(parent), prog("/usr/bin/true", &["true"], "jovyan"));
    nb.s.exit(CG, t, 0);
    for key in chain.into_iter().rev() {
        nb.s.exit(CG, key, 0);
    }
    Attack {
        name: format!("deep fork chain ({depth})"),
        events: nb.s.events,
    }
}

/// One process that execs `times` times: the shell forks `sh`, which runs `exec sh -c 'exec sh
/// ...'`, so the same process becomes a new program again and again without forking.
pub fn exec_again(times: usize) -> Attack {
    let (mut nb, bash) = terminal();
    let dash = "/usr/bin/dash";
    let key = nb.s.spawn(CG, Some(bash), prog(dash, &["sh"], "jovyan"));
    for left in (0..times.saturating_sub(1)).rev() {
        let argv = [
            "sh".to_string(),
            "-c".to_string(),
            format!("exec sh -c 'exec ... {left} more'"),
        ];
        nb.s.exec_as(CG, key, Some(key), prog(dash, &["sh"], "jovyan"));
        set_last_argv(&mut nb, &argv);
    }
    nb.s.exit(CG, key, 0);
    Attack {
        name: format!("one process exec'ing {times} times"),
        events: nb.s.events,
    }
}

/// `execs` programs started by the terminal's shell as fast as `per_second` says, each forked,
/// exec'd and exited: the programs cycle through `distinct` paths (`/tmp/storm/p0`, ...).
pub fn exec_storm(execs: usize, per_second: u64, distinct: usize) -> Attack {
    let (mut nb, bash) = terminal();
    // Three events per program (fork, exec, exit).
    nb.s.set_spacing_ns(1_000_000_000 / (per_second * 3).max(1));
    let paths: Vec<String> = (0..distinct.max(1))
        .map(|i| format!("/tmp/storm/p{i}"))
        .collect();
    for i in 0..execs {
        let path = &paths[i % paths.len()];
        let name = path.rsplit('/').next().unwrap_or(path);
        let key = nb.s.spawn(CG, Some(bash), prog(path, &[name], "jovyan"));
        nb.s.exit(CG, key, 0);
    }
    Attack {
        name: format!("exec storm ({execs} execs, {per_second}/s, {distinct} programs)"),
        events: nb.s.events,
    }
}

/// A downloaded tool that connects to `count` different remotes (address and port each new),
/// 20,000 a second.
pub fn connect_flood(count: usize) -> Attack {
    let (mut nb, bash) = terminal();
    scan(&mut nb, bash, count);
    Attack {
        name: format!("{count} connects"),
        events: nb.s.events,
    }
}

/// A scanner started from `bash` that connects `count` times, each to a remote of its own.
fn scan(nb: &mut Notebook, bash: ProcessKey, count: usize) {
    let tool = nb.s.spawn(
        CG,
        Some(bash),
        prog("/home/jovyan/scan", &["./scan"], "jovyan"),
    );
    nb.s.set_spacing_ns(50_000);
    for i in 0..count {
        let addr = format!("198.19.{}.{}", (i >> 8) & 0xff, i & 0xff);
        let port = 1024 + (i % 60_000) as u16;
        nb.s.connect(
            CG,
            tool,
            Protocol::Tcp,
            (POD_IP, 40_000 + (i % 20_000) as u16),
            (&addr, port),
        );
    }
}

/// [`connect_flood`], then the real attack the flood was to hide: a miner started from the same
/// shell connects to its pool.
pub fn connect_flood_then_miner(count: usize) -> Attack {
    let (mut nb, bash) = terminal();
    scan(&mut nb, bash, count);
    let miner = nb.s.spawn(
        CG,
        Some(bash),
        prog("/home/jovyan/minerd", &["./minerd"], "jovyan"),
    );
    nb.s.connect(
        CG,
        miner,
        Protocol::Tcp,
        (POD_IP, 39_999),
        ("198.18.2.30", 3333),
    );
    Attack {
        name: format!("{count} connects, then a miner"),
        events: nb.s.events,
    }
}

/// A tool that resolves `count` different names and connects to each: with `one_address`,
/// every name answers with the same address (as a wildcard domain can), else each with its own.
pub fn dns_names(count: usize, one_address: bool) -> Attack {
    let (mut nb, bash) = terminal();
    let tool = nb.s.spawn(
        CG,
        Some(bash),
        prog("/home/jovyan/resolve", &["./resolve"], "jovyan"),
    );
    nb.s.set_spacing_ns(100_000);
    for i in 0..count {
        let name = format!("h{i}.exfil.example.com");
        let addr = if one_address {
            "198.19.0.1".to_string()
        } else {
            format!("198.19.{}.{}", (i >> 8) & 0xff, i & 0xff)
        };
        nb.resolve(tool, &name, &addr);
        nb.https(tool, &addr, 443);
    }
    let name = if one_address {
        format!("{count} DNS names of one address")
    } else {
        format!("{count} DNS names")
    };
    Attack {
        name,
        events: nb.s.events,
    }
}

/// About `bytes` of NDJSON made of one event repeated, time and all: the exec of a program by
/// the terminal's shell, written again and again (a broken or hostile sensor, a replayed file).
pub fn repeated_event(bytes: usize) -> Attack {
    let (mut nb, bash) = terminal();
    nb.s.spawn(
        CG,
        Some(bash),
        prog("/home/jovyan/minerd", &["./minerd", "-o", "pool"], "jovyan"),
    );
    let event = nb.s.events.last().cloned().expect("the exec");
    let before: usize = nb.s.events.iter().map(ndjson_len).sum();
    let copies = bytes.saturating_sub(before) / ndjson_len(&event);
    nb.s.events.extend(std::iter::repeat_n(event, copies));
    Attack {
        name: format!("{} MB of one repeated event", bytes / 1_000_000),
        events: nb.s.events,
    }
}

/// The length of an event's NDJSON line, newline included.
fn ndjson_len(event: &Event) -> usize {
    let mut out = Vec::new();
    guardlab_events::write_ndjson(&mut out, event).expect("an event serializes");
    out.len()
}

/// An attack input not made yet: its name, and how to make it.
pub struct Recipe {
    pub name: &'static str,
    pub make: fn() -> Attack,
}

/// Every attack of the issue at the size it names: 1,000- and 10,000-deep chains, one process
/// exec'ing 10,000 times, an exec storm, 100,000 connects, 10,000 DNS names (each with its own
/// address, and all of one address), and 50 MB of one repeated event. Made one at a time by
/// whoever runs them, so that only one is in memory.
pub fn all() -> Vec<Recipe> {
    vec![
        Recipe {
            name: "deep fork chain (1000)",
            make: || deep_fork_chain(1_000),
        },
        Recipe {
            name: "deep fork chain (10000)",
            make: || deep_fork_chain(10_000),
        },
        Recipe {
            name: "one process exec'ing 10000 times",
            make: || exec_again(10_000),
        },
        Recipe {
            name: "exec storm (100000 execs, 50000/s, 1000 programs)",
            make: || exec_storm(100_000, 50_000, 1_000),
        },
        Recipe {
            name: "100000 connects",
            make: || connect_flood(100_000),
        },
        Recipe {
            name: "10000 DNS names",
            make: || dns_names(10_000, false),
        },
        Recipe {
            name: "10000 DNS names of one address",
            make: || dns_names(10_000, true),
        },
        Recipe {
            name: "50 MB of one repeated event",
            make: || repeated_event(50_000_000),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The execs after the terminal's shell: the attack's.
    fn execs(events: &[Event]) -> Vec<&guardlab_events::ProcessExec> {
        let all: Vec<_> = events
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::Exec(x) => Some(x),
                _ => None,
            })
            .collect();
        let bash = all
            .iter()
            .position(|x| x.exe == "/usr/bin/bash")
            .expect("the terminal");
        all[bash + 1..].to_vec()
    }

    #[test]
    fn a_deep_chain_is_a_chain_of_shells_each_the_child_of_the_one_before() {
        let a = deep_fork_chain(300);
        let x = execs(&a.events);
        let shells: Vec<_> = x.iter().filter(|e| e.comm == "sh").collect();
        assert_eq!(shells.len(), 300);
        for pair in shells.windows(2) {
            assert_eq!(pair[1].parent, Some(pair[0].key));
        }
        // The top levels' command lines are longer than the sensor copies.
        assert!(shells[0].argv_truncated);
        let bytes: usize = shells[0].argv.iter().map(|a| a.len() + 1).sum();
        assert!(bytes <= ARGV_BYTES, "{bytes}");
        assert!(shells[0].argv[2].starts_with("sh -c 'sh -c '\\''sh -c"));
        assert_eq!(shells[299].argv, ["sh", "-c", "true"]);
        assert!(!shells[299].argv_truncated);
        assert!(a.events.windows(2).all(|w| w[0].ts <= w[1].ts));
    }

    #[test]
    fn exec_again_keeps_one_process() {
        let a = exec_again(50);
        let x = execs(&a.events);
        let sh: Vec<_> = x.iter().filter(|e| e.comm == "sh").collect();
        assert_eq!(sh.len(), 50);
        assert!(sh.iter().all(|e| e.key == sh[0].key));
        assert!(sh[1..].iter().all(|e| e.parent == Some(sh[0].key)));
    }

    #[test]
    fn a_storm_has_the_rate_and_programs_asked_for() {
        let a = exec_storm(3_000, 1_000, 10);
        let x = execs(&a.events);
        let storm: Vec<_> = x
            .iter()
            .filter(|e| e.exe.starts_with("/tmp/storm/"))
            .collect();
        assert_eq!(storm.len(), 3_000);
        let mut paths: Vec<&str> = storm.iter().map(|e| e.exe.as_str()).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), 10);
        // Three events per program, 1,000 programs a second: 3 s from the first to the last.
        let first = a
            .events
            .iter()
            .position(|e| matches!(&e.body, EventBody::Exec(x) if x.exe.starts_with("/tmp/storm/")))
            .unwrap();
        let span = a.events.last().unwrap().ts - a.events[first].ts;
        assert!((2_990_000_000..=3_010_000_000).contains(&span), "{span}");
    }

    #[test]
    fn floods_and_names_have_the_counts_asked_for() {
        let a = connect_flood(1_000);
        let connects = a
            .events
            .iter()
            .filter(|e| matches!(&e.body, EventBody::Connect(c) if c.remote_ip.to_string().starts_with("198.19.")))
            .count();
        assert_eq!(connects, 1_000);
        for one in [false, true] {
            let a = dns_names(500, one);
            let mut addrs = Vec::new();
            let mut names = 0;
            for e in &a.events {
                if let EventBody::Dns(d) = &e.body
                    && d.name.ends_with(".exfil.example.com")
                {
                    names += 1;
                    addrs.extend(d.addresses.iter().copied());
                }
            }
            addrs.sort();
            addrs.dedup();
            assert_eq!(names, 500);
            assert_eq!(addrs.len(), if one { 1 } else { 500 });
        }
    }

    #[test]
    fn every_recipe_is_named_as_its_attack() {
        // The cheap ones only: the names say what they make.
        for r in attack_recipes_cheap() {
            assert_eq!((r.make)().name, r.name);
        }
    }

    fn attack_recipes_cheap() -> Vec<Recipe> {
        all()
            .into_iter()
            .filter(|r| r.name.contains("(1000)") || r.name.contains("exec'ing"))
            .collect()
    }

    #[test]
    fn the_repeated_event_fills_the_bytes_asked_for() {
        let a = repeated_event(1_000_000);
        let mut out = Vec::new();
        for e in &a.events {
            guardlab_events::write_ndjson(&mut out, e).unwrap();
        }
        assert!((990_000..1_010_000).contains(&out.len()), "{}", out.len());
        let last = a.events.last().unwrap();
        let same = a.events.iter().rev().take_while(|e| *e == last).count();
        assert!(same > 1_000, "{same}");
    }
}
