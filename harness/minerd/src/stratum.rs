//! Stratum v1 messages: newline-delimited JSON-RPC over TCP, as spoken by cpuminer and pools.
//!
//! A line is either a [`Request`] (a call with an `id`, or a notification with `id: null`)
//! or a [`Response`]. The typed parameter structs ([`Notify`], [`Submit`],
//! [`SubscribeResult`]) serialize to the positional arrays the protocol uses.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Method names.
pub mod method {
    pub const SUBSCRIBE: &str = "mining.subscribe";
    pub const AUTHORIZE: &str = "mining.authorize";
    pub const SUBMIT: &str = "mining.submit";
    pub const NOTIFY: &str = "mining.notify";
    pub const SET_DIFFICULTY: &str = "mining.set_difficulty";
}

/// A call or notification. Notifications (`mining.notify`, `mining.set_difficulty`) carry
/// `id: null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    #[serde(default)]
    pub id: Value,
    pub method: String,
    #[serde(default)]
    pub params: Value,
}

impl Request {
    pub fn call(id: u64, method: &str, params: impl Serialize) -> Request {
        Request {
            id: Value::from(id),
            method: method.to_string(),
            params: to_value(params),
        }
    }

    pub fn notification(method: &str, params: impl Serialize) -> Request {
        Request {
            id: Value::Null,
            method: method.to_string(),
            params: to_value(params),
        }
    }

    /// The parameters decoded as `T` (for example [`Notify`] or [`Submit`]).
    pub fn params_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.params)
    }
}

/// The answer to a call. Pools answer errors as `[code, message, data]`; some send a bare
/// string, so `error` stays a JSON value and [`Response::error_message`] reads both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub id: Value,
    #[serde(default)]
    pub result: Value,
    #[serde(default)]
    pub error: Value,
}

impl Response {
    pub fn ok(id: Value, result: impl Serialize) -> Response {
        Response {
            id,
            result: to_value(result),
            error: Value::Null,
        }
    }

    /// A refusal: `result: false` and the conventional `[code, message, null]` error
    /// (cpuminer prints the message as the reject reason).
    pub fn reject(id: Value, error: StratumError) -> Response {
        Response {
            id,
            result: Value::Bool(false),
            error: Value::Array(vec![
                Value::from(error.code()),
                Value::from(error.message()),
                Value::Null,
            ]),
        }
    }

    /// Whether the call succeeded: a result that is neither null nor false, and no error.
    pub fn is_success(&self) -> bool {
        !matches!(self.result, Value::Null | Value::Bool(false)) && self.error.is_null()
    }

    pub fn error_message(&self) -> Option<String> {
        match &self.error {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            Value::Array(items) => items
                .get(1)
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| Some(self.error.to_string())),
            other => Some(other.to_string()),
        }
    }
}

/// One line of the protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Message {
    Request(Request),
    Response(Response),
}

impl Message {
    /// Parses one line (without or with its trailing newline).
    pub fn parse_line(line: &str) -> Result<Message, serde_json::Error> {
        serde_json::from_str(line.trim_end_matches(['\r', '\n']))
    }

    /// The line to send, newline included.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("Stratum messages always serialize");
        line.push('\n');
        line
    }
}

impl From<Request> for Message {
    fn from(r: Request) -> Message {
        Message::Request(r)
    }
}

impl From<Response> for Message {
    fn from(r: Response) -> Message {
        Message::Response(r)
    }
}

fn to_value(v: impl Serialize) -> Value {
    serde_json::to_value(v).expect("Stratum parameters always serialize")
}

/// `mining.notify` parameters: `[job_id, prevhash, coinb1, coinb2, merkle_branch, version,
/// nbits, ntime, clean_jobs]`, all hex strings except the branch list and the flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "NotifyParams", into = "NotifyParams")]
pub struct Notify {
    pub job_id: String,
    pub prevhash: String,
    pub coinb1: String,
    pub coinb2: String,
    pub merkle_branch: Vec<String>,
    pub version: String,
    pub nbits: String,
    pub ntime: String,
    pub clean_jobs: bool,
}

type NotifyParams = (
    String,
    String,
    String,
    String,
    Vec<String>,
    String,
    String,
    String,
    bool,
);

impl From<NotifyParams> for Notify {
    fn from(p: NotifyParams) -> Notify {
        Notify {
            job_id: p.0,
            prevhash: p.1,
            coinb1: p.2,
            coinb2: p.3,
            merkle_branch: p.4,
            version: p.5,
            nbits: p.6,
            ntime: p.7,
            clean_jobs: p.8,
        }
    }
}

impl From<Notify> for NotifyParams {
    fn from(n: Notify) -> NotifyParams {
        (
            n.job_id,
            n.prevhash,
            n.coinb1,
            n.coinb2,
            n.merkle_branch,
            n.version,
            n.nbits,
            n.ntime,
            n.clean_jobs,
        )
    }
}

/// `mining.submit` parameters: `[worker, job_id, extranonce2, ntime, nonce]`, hex strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "SubmitParams", into = "SubmitParams")]
pub struct Submit {
    pub worker: String,
    pub job_id: String,
    pub extranonce2: String,
    pub ntime: String,
    pub nonce: String,
}

type SubmitParams = (String, String, String, String, String);

impl From<SubmitParams> for Submit {
    fn from(p: SubmitParams) -> Submit {
        Submit {
            worker: p.0,
            job_id: p.1,
            extranonce2: p.2,
            ntime: p.3,
            nonce: p.4,
        }
    }
}

impl From<Submit> for SubmitParams {
    fn from(s: Submit) -> SubmitParams {
        (s.worker, s.job_id, s.extranonce2, s.ntime, s.nonce)
    }
}

/// The result of `mining.subscribe`: `[[[method, subscription_id], ...], extranonce1,
/// extranonce2_size]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "SubscribeParams", into = "SubscribeParams")]
pub struct SubscribeResult {
    pub subscriptions: Vec<(String, String)>,
    pub extranonce1: String,
    pub extranonce2_size: usize,
}

type SubscribeParams = (Vec<(String, String)>, String, usize);

impl From<SubscribeParams> for SubscribeResult {
    fn from(p: SubscribeParams) -> SubscribeResult {
        SubscribeResult {
            subscriptions: p.0,
            extranonce1: p.1,
            extranonce2_size: p.2,
        }
    }
}

impl From<SubscribeResult> for SubscribeParams {
    fn from(s: SubscribeResult) -> SubscribeParams {
        (s.subscriptions, s.extranonce1, s.extranonce2_size)
    }
}

/// The conventional Stratum error codes a pool answers a refused call with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StratumError {
    Other,
    JobNotFound,
    DuplicateShare,
    LowDifficultyShare,
    UnauthorizedWorker,
    NotSubscribed,
}

impl StratumError {
    pub fn code(self) -> i64 {
        match self {
            StratumError::Other => 20,
            StratumError::JobNotFound => 21,
            StratumError::DuplicateShare => 22,
            StratumError::LowDifficultyShare => 23,
            StratumError::UnauthorizedWorker => 24,
            StratumError::NotSubscribed => 25,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            StratumError::Other => "Other/Unknown",
            StratumError::JobNotFound => "Job not found (=stale)",
            StratumError::DuplicateShare => "Duplicate share",
            StratumError::LowDifficultyShare => "Low difficulty share",
            StratumError::UnauthorizedWorker => "Unauthorized worker",
            StratumError::NotSubscribed => "Not subscribed",
        }
    }
}

impl std::fmt::Display for StratumError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cpuminer_lines_parse_as_requests() {
        // Byte for byte what cpuminer 2.5.1 sends (cpu-miner.c / util.c sprintf formats).
        let sub = Message::parse_line(
            "{\"id\": 1, \"method\": \"mining.subscribe\", \"params\": [\"cpuminer/2.5.1\"]}\n",
        )
        .unwrap();
        let Message::Request(sub) = sub else {
            panic!("subscribe parsed as a response")
        };
        assert_eq!(sub.method, method::SUBSCRIBE);
        assert_eq!(sub.params_as::<Vec<String>>().unwrap(), ["cpuminer/2.5.1"]);

        let submit = Message::parse_line(
            "{\"method\": \"mining.submit\", \"params\": [\"ME\", \"1f\", \"01000000\", \"504e86ed\", \"b2957c02\"], \"id\":4}",
        )
        .unwrap();
        let Message::Request(submit) = submit else {
            panic!("submit parsed as a response")
        };
        assert_eq!(submit.id, json!(4));
        assert_eq!(
            submit.params_as::<Submit>().unwrap(),
            Submit {
                worker: "ME".into(),
                job_id: "1f".into(),
                extranonce2: "01000000".into(),
                ntime: "504e86ed".into(),
                nonce: "b2957c02".into(),
            }
        );
    }

    #[test]
    fn notify_round_trips_as_the_positional_array() {
        let notify = Notify {
            job_id: "bf".into(),
            prevhash: "4d16b6f85af6e2198f44ae2a6de67f78487ae5611b77c6c0440b921e00000000".into(),
            coinb1: "01000000".into(),
            coinb2: "ffffffff".into(),
            merkle_branch: vec!["11".repeat(32)],
            version: "00000002".into(),
            nbits: "1c2ac4af".into(),
            ntime: "504e86b9".into(),
            clean_jobs: false,
        };
        let line = Message::from(Request::notification(method::NOTIFY, &notify)).to_line();
        assert!(line.ends_with('\n'));
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["id"], Value::Null);
        assert_eq!(value["params"][0], json!("bf"));
        assert_eq!(value["params"][4][0], json!("11".repeat(32)));
        assert_eq!(value["params"][8], json!(false));
        let Message::Request(back) = Message::parse_line(&line).unwrap() else {
            panic!("notify parsed as a response")
        };
        assert_eq!(back.params_as::<Notify>().unwrap(), notify);
    }

    #[test]
    fn subscribe_result_and_rejections_round_trip() {
        let result = SubscribeResult {
            subscriptions: vec![
                ("mining.set_difficulty".into(), "d1".into()),
                ("mining.notify".into(), "n1".into()),
            ],
            extranonce1: "08000002".into(),
            extranonce2_size: 4,
        };
        let line = Message::from(Response::ok(json!(1), &result)).to_line();
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap()["result"],
            json!([
                [["mining.set_difficulty", "d1"], ["mining.notify", "n1"]],
                "08000002",
                4
            ])
        );
        let Message::Response(resp) = Message::parse_line(&line).unwrap() else {
            panic!("response parsed as a request")
        };
        assert!(resp.is_success());
        assert_eq!(SubscribeResult::deserialize(&resp.result).unwrap(), result);

        let reject = Response::reject(json!(4), StratumError::LowDifficultyShare);
        let Message::Response(back) =
            Message::parse_line(&Message::from(reject).to_line()).unwrap()
        else {
            panic!("rejection parsed as a request")
        };
        assert!(!back.is_success());
        assert_eq!(
            back.error_message().as_deref(),
            Some("Low difficulty share")
        );
        assert_eq!(back.error[0], json!(23));
    }

    #[test]
    fn malformed_lines_and_params_are_errors() {
        assert!(Message::parse_line("not json").is_err());
        assert!(Message::parse_line("{\"params\": []}").is_err());
        let short = Request::call(4, method::SUBMIT, ["ME", "1f"]);
        assert!(short.params_as::<Submit>().is_err());
    }
}
