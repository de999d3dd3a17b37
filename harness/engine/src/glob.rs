//! Glob patterns as the public policy format uses them (Python `fnmatch` semantics), and the
//! "common wildcard" that symmetric merge builds from two different names.
//!
//! Patterns: `*` matches any run of characters, `/` included (an `exe` of `/opt/*` covers
//! `/opt/conda/bin/python3`), `?` exactly one character, `[abc]`, `[a-z]` one character of a
//! set, `[!abc]` (or `[^abc]`) one character outside it. There is no escape character; a `[`
//! without a closing `]` is a literal `[`. Matching is case-sensitive, as on Linux.
//!
//! This is a small hand-written matcher rather than `globset` on purpose: the deviation
//! matcher evaluates patterns on its hot path against short names, and a byte-wise
//! backtracking matcher with no compilation step and no allocation is both simpler and
//! faster there than a compiled regex set.

/// True when `s` contains a glob metacharacter (`*`, `?` or `[`).
pub fn is_glob(s: &str) -> bool {
    s.bytes().any(|b| matches!(b, b'*' | b'?' | b'['))
}

/// True when `text` matches the glob `pattern` as a whole.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern index after it, text index it was tried at).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi + 1, ti));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    ti += utf8_len(t[ti]);
                    continue;
                }
                b'[' => {
                    let ch = text[ti..].chars().next().unwrap_or_default();
                    match match_class(&pattern[pi + 1..], ch) {
                        Some((true, used)) => {
                            pi += 1 + used;
                            ti += ch.len_utf8();
                            continue;
                        }
                        Some((false, _)) => {}
                        // No closing bracket: a literal `[`.
                        None if t[ti] == b'[' => {
                            pi += 1;
                            ti += 1;
                            continue;
                        }
                        None => {}
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        // Mismatch: let the last `*` swallow one more character, or fail.
        match star {
            Some((sp, st)) => {
                let next = st + utf8_len(t[st]);
                star = Some((sp, next));
                pi = sp;
                ti = next;
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// Match `ch` against the class whose text starts right after `[`. Returns whether it matched
/// and how many bytes of `class` the class used (up to and including `]`), or `None` when the
/// class is not closed.
fn match_class(class: &str, ch: char) -> Option<(bool, usize)> {
    let mut chars = class.char_indices().peekable();
    let mut negate = false;
    if let Some(&(_, c)) = chars.peek()
        && (c == '!' || c == '^')
    {
        negate = true;
        chars.next();
    }
    let mut matched = false;
    let mut first = true;
    while let Some((i, c)) = chars.next() {
        if c == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        // A range `a-z`, unless the `-` is last before `]`.
        let mut is_range = false;
        if let Some(&(_, '-')) = chars.peek() {
            let mut ahead = chars.clone();
            ahead.next();
            if let Some(&(_, hi)) = ahead.peek()
                && hi != ']'
            {
                chars.next();
                chars.next();
                is_range = true;
                if c <= ch && ch <= hi {
                    matched = true;
                }
            }
        }
        if !is_range && c == ch {
            matched = true;
        }
    }
    None
}

/// A pattern prepared for repeated matching: plain strings compare by equality.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Glob {
    Any,
    Exact(Box<str>),
    Pattern(Box<str>),
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        if pattern == "*" {
            Glob::Any
        } else if is_glob(pattern) {
            Glob::Pattern(pattern.into())
        } else {
            Glob::Exact(pattern.into())
        }
    }

    pub fn matches(&self, text: &str) -> bool {
        match self {
            Glob::Any => true,
            Glob::Exact(s) => **s == *text,
            Glob::Pattern(p) => glob_match(p, text),
        }
    }
}

/// The shortest run of common characters a wildcard name must keep (the reference's rule).
pub const MIN_COMMON: usize = 3;

/// The wildcard that covers two different names when they share a run of at least
/// [`MIN_COMMON`] characters: `python3` and `python3.11` give `python3*`, `ipython3` and
/// `python3` give `*python3`, `kube-proxy` and `kube-proxy-x` give `kube-proxy*`.
///
/// The longest common run is used (the first one in `a` on ties); `*` goes on each side where
/// the two names do not both start (or end) with that run, so the result matches both.
/// Glob characters already in the names never take part in the common run.
pub fn common_wildcard(a: &str, b: &str) -> Option<String> {
    if a == b {
        return Some(a.to_string());
    }
    let ac: Vec<char> = a.chars().collect();
    let bc: Vec<char> = b.chars().collect();
    let meta = |c: char| matches!(c, '*' | '?' | '[' | ']');
    // Longest common substring, dynamic programming over one row.
    let mut row = vec![0usize; bc.len() + 1];
    let (mut best_len, mut best_end) = (0usize, 0usize);
    for i in 1..=ac.len() {
        let mut diag = 0usize;
        for j in 1..=bc.len() {
            let up = row[j];
            row[j] = if ac[i - 1] == bc[j - 1] && !meta(ac[i - 1]) {
                diag + 1
            } else {
                0
            };
            if row[j] > best_len {
                best_len = row[j];
                best_end = i;
            }
            diag = up;
        }
    }
    if best_len < MIN_COMMON {
        return None;
    }
    let common: String = ac[best_end - best_len..best_end].iter().collect();
    let mut out = String::with_capacity(common.len() + 2);
    if !(a.starts_with(&common) && b.starts_with(&common)) {
        out.push('*');
    }
    out.push_str(&common);
    if !(a.ends_with(&common) && b.ends_with(&common)) {
        out.push('*');
    }
    Some(out)
}

/// The name two process nodes share under symmetric merge, or `None` when they are different
/// processes: equal names, one name a glob that matches the other, or a common wildcard.
pub fn merged_name(a: &str, b: &str) -> Option<String> {
    if a == b || glob_match(a, b) {
        Some(a.to_string())
    } else if glob_match(b, a) {
        Some(b.to_string())
    } else {
        common_wildcard(a, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_patterns_match_only_themselves() {
        assert!(glob_match("/usr/bin/ls", "/usr/bin/ls"));
        assert!(!glob_match("/usr/bin/ls", "/usr/bin/lsof"));
        assert!(!glob_match("/usr/bin/lsof", "/usr/bin/ls"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
    }

    #[test]
    fn star_matches_any_run_including_slashes() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "anything/at/all"));
        assert!(glob_match("/opt/*", "/opt/conda/bin/python3.11"));
        assert!(glob_match("/tmp/*", "/tmp/minerd"));
        assert!(!glob_match("/tmp/*", "/usr/tmp/minerd"));
        assert!(glob_match("*python3*", "ipython3.11"));
        assert!(glob_match("a*b*c", "aXXbYYbZc"));
        assert!(!glob_match("a*b*c", "aXXbYYbZ"));
        assert!(glob_match(
            "*orc.prod.spyderbat.com",
            "eu.orc.prod.spyderbat.com"
        ));
        assert!(glob_match("**x", "x"));
    }

    #[test]
    fn question_mark_is_exactly_one_character() {
        assert!(glob_match("python3.??", "python3.11"));
        assert!(!glob_match("python3.??", "python3.1"));
        assert!(glob_match("caf?", "café"), "one multi-byte character");
    }

    #[test]
    fn classes_ranges_and_negation() {
        assert!(glob_match("sh[0-9]", "sh5"));
        assert!(!glob_match("sh[0-9]", "sha"));
        assert!(glob_match("[!a]bc", "xbc"));
        assert!(!glob_match("[!a]bc", "abc"));
        assert!(glob_match("[^a]bc", "xbc"));
        assert!(glob_match("[]]x", "]x"), "] first in a class is literal");
        assert!(glob_match("[a-]x", "-x"), "- last in a class is literal");
        assert!(glob_match("x[", "x["), "unclosed [ is literal");
        assert!(!glob_match("x[", "xa"));
        assert!(glob_match("*[.]py", "setup.py"));
    }

    #[test]
    fn prepared_globs_agree_with_the_matcher() {
        for (p, t) in [
            ("*", "x"),
            ("/bin/ls", "/bin/ls"),
            ("/bin/l?", "/bin/ls"),
            ("a*", "b"),
        ] {
            assert_eq!(Glob::new(p).matches(t), glob_match(p, t), "{p} {t}");
        }
        assert_eq!(Glob::new("*"), Glob::Any);
        assert!(matches!(Glob::new("ls"), Glob::Exact(_)));
    }

    #[test]
    fn common_wildcard_needs_three_common_characters() {
        assert_eq!(
            common_wildcard("python3", "python3.11").as_deref(),
            Some("python3*")
        );
        assert_eq!(
            common_wildcard("ipython3", "python3").as_deref(),
            Some("*python3")
        );
        assert_eq!(
            common_wildcard("xkubex", "ykubey").as_deref(),
            Some("*kube*")
        );
        assert_eq!(common_wildcard("sh", "bash"), None);
        assert_eq!(common_wildcard("ls", "lsof"), None);
        assert_eq!(common_wildcard("pip", "pip"), Some("pip".into()));
        assert_eq!(common_wildcard("pip", "pip3").as_deref(), Some("pip*"));
    }

    #[test]
    fn common_wildcard_matches_both_names() {
        let pairs = [
            ("python3", "ipython3"),
            ("jupyter-lab", "jupyter-server"),
            ("abcdef", "xxcdefyy"),
        ];
        for (a, b) in pairs {
            let w = common_wildcard(a, b).unwrap();
            assert!(
                glob_match(&w, a) && glob_match(&w, b),
                "{w} must match {a} and {b}"
            );
        }
    }

    #[test]
    fn merged_name_prefers_an_existing_glob() {
        assert_eq!(merged_name("pip*", "pip3").as_deref(), Some("pip*"));
        assert_eq!(merged_name("pip3", "pip*").as_deref(), Some("pip*"));
        assert_eq!(merged_name("bash", "bash").as_deref(), Some("bash"));
        assert_eq!(merged_name("bash", "sh"), None);
    }
}
