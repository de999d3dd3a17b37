//! TEMPORARY until guardlab-graph lands (not to be committed).
use guardlab_engine::model::{Deviation, Fingerprint, Policy};
use guardlab_engine::trace::Investigation;
pub(crate) fn fingerprint_svg(_f: &Fingerprint) -> String {
    String::from("<svg xmlns='http://www.w3.org/2000/svg'><text>fp</text></svg>")
}
pub(crate) fn policy_svg(_p: &Policy, _d: &[Deviation]) -> String {
    String::from("<svg xmlns='http://www.w3.org/2000/svg'><text>policy</text></svg>")
}
pub(crate) fn investigation_svg(_i: &Investigation) -> String {
    String::from("<svg xmlns='http://www.w3.org/2000/svg'><text>inv</text></svg>")
}
pub(crate) fn deviation_summary(d: &Deviation) -> String {
    format!("{:?}", d.metadata.kind)
}
