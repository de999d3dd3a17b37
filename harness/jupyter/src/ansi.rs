//! Terminal output to plain text.

/// Removes ANSI escape sequences (CSI, OSC, charset selection and other two-byte escapes) and
/// BEL, keeping everything else as it is.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates, then one final byte in @..~.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC (window title...), ended by BEL or ST (ESC \).
                Some(']') | Some('P') | Some('_') | Some('^') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                // Charset selection takes one more character.
                Some('(') | Some(')') | Some('*') | Some('+') => {
                    chars.next();
                }
                _ => {}
            },
            // CSI as a single 8-bit character.
            '\u{9b}' => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            '\u{7}' => {}
            c => out.push(c),
        }
    }
    out
}

/// What a terminal would show for this output: escapes removed, backspaces applied, each line
/// as it stands after its last carriage return (progress bars keep their final state), `\n`
/// line ends.
pub fn screen_text(s: &str) -> String {
    let plain = strip_ansi(s);
    let mut lines = Vec::new();
    for raw in plain.split('\n') {
        let mut line: Vec<char> = Vec::new();
        let mut col = 0usize;
        for c in raw.chars() {
            match c {
                '\r' => col = 0,
                '\u{8}' => col = col.saturating_sub(1),
                c if c.is_control() && c != '\t' => {}
                c => {
                    if col < line.len() {
                        line[col] = c;
                    } else {
                        line.push(c);
                    }
                    col += 1;
                }
            }
        }
        // A carriage return then a shorter text leaves the rest of the old text on a real
        // screen; but `\r` alone at the end of a line (CR LF) must not blank it.
        lines.push(line.into_iter().collect::<String>());
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_removed() {
        assert_eq!(
            strip_ansi("\u{1b}[?2004h\u{1b}]0;jovyan@x: ~\u{7}\u{1b}[01;32mhi\u{1b}[00m\u{1b}(B!"),
            "hi!"
        );
        assert_eq!(strip_ansi("a\u{1b}]2;title\u{1b}\\b"), "ab");
    }

    #[test]
    fn the_screen_keeps_what_a_terminal_shows() {
        assert_eq!(screen_text("echo hi\r\nhi\r\n"), "echo hi\nhi\n");
        assert_eq!(screen_text(" 10%\r 50%\r100%\r\ndone"), "100%\ndone");
        assert_eq!(screen_text("abc\u{8}\u{8}X"), "aXc");
        assert_eq!(
            screen_text("\u{1b}[01;34mdir\u{1b}[0m  file\r\n"),
            "dir  file\n"
        );
    }
}
