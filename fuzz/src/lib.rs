//! Fuzz targets for guardlab's parsers, one function per target. Each takes arbitrary bytes and
//! panics only on a bug: a parser must refuse bad input with an error, never crash, hang or
//! accept what it cannot give back.
//!
//! - [`document`]: spyctl YAML (`guardlab_engine::document`): whatever it accepts, written again,
//!   reads back as the same documents.
//! - [`events`]: the NDJSON event stream (`guardlab_events`): whatever it accepts, written again,
//!   reads back the same; and the engine turns it into fingerprint groups that guardlab's own
//!   validator accepts.
//! - [`scenario_file`]: the scenario file format (`harness/scenario-file`).
//! - [`control`]: the sensor's control protocol: a request line (`guardlab_events::control`)
//!   round-trips, and the sensor's serve side (`guardlab_sensor::serve_connection`) takes any
//!   client byte stream without a panic, with a reply for every kill it is asked.
//!
//! The AFL++ entry points are `src/bin/afl_*.rs`; `fuzz-run` installs the tools, builds and runs
//! them; `tests/seeds.rs` runs every seed and every saved finding through these functions in
//! `cargo test`.

use std::io::BufReader;

use guardlab_engine::document::{self, Document};
use guardlab_events::control::{SensorReply, SensorRequest};

/// The names of the targets, as `fuzz-run`, the seeds folders and the AFL++ binaries
/// (`afl_<name>`) spell them.
pub const TARGETS: [&str; 4] = ["document", "events", "scenario_file", "control"];

/// Runs target `name` on `data` (for the seed test and for reproducing a finding).
pub fn run(name: &str, data: &[u8]) {
    match name {
        "document" => document(data),
        "events" => events(data),
        "scenario_file" => scenario_file(data),
        "control" => control(data),
        other => panic!("no fuzz target `{other}` (targets: {TARGETS:?})"),
    }
}

/// spyctl YAML: parse and validate; what is accepted is written and read back unchanged.
pub fn document(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(docs) = document::load_documents("fuzz.yaml", text) else {
        return;
    };
    let written = document::to_yaml_documents(&docs);
    match document::load_documents("written.yaml", &written) {
        Ok(again) => assert!(
            again == docs,
            "written and read again, the documents changed:\n{written}"
        ),
        Err(problems) => panic!(
            "guardlab refuses what it wrote from a valid file: {}\n{written}",
            document::Diagnostics(problems)
        ),
    }
}

/// NDJSON events: read; what is read is written and read back unchanged, and fingerprinted.
pub fn events(data: &[u8]) {
    let Ok(events) = guardlab_events::read_ndjson(BufReader::new(data)) else {
        return;
    };
    let mut written = Vec::new();
    for event in &events {
        guardlab_events::write_ndjson(&mut written, event).expect("writing to memory");
    }
    let again = guardlab_events::read_ndjson(BufReader::new(&written[..]))
        .unwrap_or_else(|e| panic!("guardlab refuses the events it wrote: {e}"));
    assert!(
        again == events,
        "written and read again, the events changed"
    );

    let mut sorted = events;
    guardlab_engine::sort_events(&mut sorted);
    let mut builder = guardlab_engine::fingerprint::FingerprintBuilder::new();
    builder.observe_all(&sorted);
    let groups: Vec<Document> = builder
        .finish_grouped()
        .into_iter()
        .map(Document::FingerprintGroup)
        .collect();
    if !groups.is_empty() {
        let yaml = document::to_yaml_documents(&groups);
        if let Err(problems) = document::load_documents("fingerprints.yaml", &yaml) {
            panic!(
                "guardlab refuses the fingerprints it made: {}\n{yaml}",
                document::Diagnostics(problems)
            );
        }
    }
}

/// A scenario file: parse (its errors name file, line and key; nothing may panic).
pub fn scenario_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = guardlab_scenario_file::parse_scenario("fuzz.yaml", text) {
        // Formatting the error is part of what a user sees.
        let _ = e.to_string();
    }
}

/// The control protocol. The first line is read as a request on its own (a request that parses
/// round-trips through JSON); then the whole input is one client's byte stream to the sensor's
/// serve side, against a main loop that answers every kill and streams a line to every
/// subscription.
pub fn control(data: &[u8]) {
    let first = data.split(|b| *b == b'\n').next().unwrap_or_default();
    if let Ok(request) = serde_json::from_slice::<SensorRequest>(first) {
        let line = serde_json::to_string(&request).expect("requests serialize");
        let again: SensorRequest = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the sensor refuses the request it wrote ({e}): {line}"));
        assert_eq!(again, request);
    }
    if let Ok(reply) = serde_json::from_slice::<SensorReply>(first) {
        let line = serde_json::to_string(&reply).expect("replies serialize");
        assert_eq!(
            serde_json::from_str::<SensorReply>(&line).expect("a reply reads back"),
            reply
        );
    }
    serve(data);
}

/// One connection of the serve side, fed `data` as the client's bytes.
fn serve(data: &[u8]) {
    use guardlab_sensor::serve_connection::{Command, connection};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async {
        let (commands, mut asked) = tokio::sync::mpsc::channel::<Command>(16);
        let main_loop = tokio::spawn(async move {
            let mut subscriptions = Vec::new();
            while let Some(command) = asked.recv().await {
                match command {
                    Command::Kill { reply, .. } | Command::KillGroup { reply, .. } => {
                        let _ = reply.send(SensorReply::error("fuzzing: no such process"));
                    }
                    Command::Subscribe { out, .. } => {
                        let _ = out.try_send("{\"v\":1}\n".to_string());
                        subscriptions.push(out);
                    }
                    Command::Disconnect { .. } => {}
                }
            }
        });
        let mut written = Vec::new();
        let result = connection(1, data, &mut written, &commands).await;
        drop(commands);
        main_loop
            .await
            .expect("the stand-in main loop does not panic");
        // A connection that ends with an error says why (the sensor prints it).
        if let Err(e) = result {
            assert!(!e.to_string().is_empty());
        }
        // Everything written back is whole lines.
        assert!(
            written.is_empty() || written.ends_with(b"\n"),
            "a partial line was written back"
        );
    });
}
