//! The error of the engine's operations on documents: a policy it cannot make, merge or match
//! with, and why. (Reading a file has its own errors: [`crate::document::Diagnostic`].)

/// Why the engine cannot make a policy, merge a document or match with a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("no fingerprint to make a policy from")]
    NoFingerprints,
    #[error("expected a {expected} document, got a {found} document (named {name:?})")]
    WrongKind {
        expected: String,
        found: String,
        name: String,
    },
    #[error(
        "cannot merge the images {first:?} and {second:?}: they are different repositories; make one policy per image"
    )]
    ImageMismatch { first: String, second: String },
    #[error("{document:?}: processPolicy: the id {id:?} is used twice")]
    DuplicateId { document: String, id: String },
    #[error("the deviation hangs under process node {id:?}, which policy {policy:?} does not have")]
    UnknownPolicyNode { policy: String, id: String },
    #[error(
        "the deviation belongs to policy uid {deviation:?}, not to this policy (uid {policy:?})"
    )]
    PolicyMismatch { deviation: String, policy: String },
    #[error(
        "policy {policy:?}: {field}: {value:?} is not an IP block (a.b.c.d/n or x::y/n, host bits zero)"
    )]
    InvalidCidr {
        policy: String,
        field: String,
        value: String,
    },
    #[error("policy {policy:?}: {field}: unknown protocol {value:?}, expected TCP or UDP")]
    UnknownProtocol {
        policy: String,
        field: String,
        value: String,
    },
}
