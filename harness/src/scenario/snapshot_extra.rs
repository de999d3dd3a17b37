//! A run paced by a person (workshop mode, where the learner typed in the pod): what a step's
//! snapshot expects must be there, and what the person did besides is extra, not a failure.
//! [`covers`] says whether a step's text has everything its snapshot has.

use serde_yaml::Value;

/// Whether `actual` (the run's text) has everything `expected` (the snapshot) has: the same
/// documents; in maps every expected key, covered; in lists every expected item, each by an
/// item of its own (in any order); numbers at least as large (a count the person's own
/// actions raised); any other value equal. Texts that are not YAML must be equal.
pub fn covers(expected: &str, actual: &str) -> bool {
    match (documents(expected), documents(actual)) {
        (Some(e), Some(a)) => {
            e.len() == a.len() && e.iter().zip(&a).all(|(e, a)| value_covers(e, a))
        }
        _ => expected.trim_end() == actual.trim_end(),
    }
}

fn documents(text: &str) -> Option<Vec<Value>> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).ok())
        .collect()
}

fn value_covers(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Mapping(e), Value::Mapping(a)) => e
            .iter()
            .all(|(k, ev)| a.get(k).is_some_and(|av| value_covers(ev, av))),
        (Value::Sequence(e), Value::Sequence(a)) => {
            let mut used = vec![false; a.len()];
            e.iter().all(|ev| {
                let found = a
                    .iter()
                    .enumerate()
                    .find(|(i, av)| !used[*i] && value_covers(ev, av));
                match found {
                    Some((i, _)) => {
                        used[i] = true;
                        true
                    }
                    None => false,
                }
            })
        }
        (Value::Number(e), Value::Number(a)) => match (e.as_u64(), a.as_u64()) {
            (Some(e), Some(a)) => a >= e,
            _ => e == a,
        },
        (e, a) => e == a,
    }
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn more_is_covered_and_anything_missing_or_different_is_not() {
        let expected = "policy: p\ncount: 1\nflags:\n- id\n- sudo\n";
        // More occurrences, more flags, in another order: the person did more.
        assert!(covers(
            expected,
            "policy: p\ncount: 3\nflags:\n- bash\n- sudo\n- id\nextra: 1\n"
        ));
        // A flag missing, a value changed, fewer occurrences: what the step expects is not there.
        assert!(!covers(expected, "policy: p\ncount: 1\nflags:\n- id\n"));
        assert!(!covers(
            expected,
            "policy: q\ncount: 1\nflags:\n- id\n- sudo\n"
        ));
        assert!(!covers(
            expected,
            "policy: p\ncount: 0\nflags:\n- id\n- sudo\n"
        ));
        // One actual item covers one expected item only.
        assert!(!covers("- id\n- id\n", "- id\n"));
        // Several documents, each covered by its own.
        assert!(covers("a: 1\n---\nb: 2\n", "a: 1\n---\nb: 2\nc: 3\n"));
        assert!(!covers("a: 1\n---\nb: 2\n", "a: 1\n"));
        // Text that is not YAML: equal or not.
        assert!(covers("[unclosed\n", "[unclosed"));
        assert!(!covers("[unclosed\n", "[other"));
    }
}
