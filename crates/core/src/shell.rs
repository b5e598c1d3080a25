//! Quoting for the remote shell: the one place a command line becomes text.
//!
//! ssh hands its command to the remote user's login shell as one string, so
//! every word we send must survive a POSIX `sh` parse unchanged. We quote
//! every word that is not made only of characters no shell treats specially.

/// Quotes one word for a POSIX shell.
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,#".contains(&b));
    if plain && !word.starts_with('#') {
        return word.to_string();
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('\'');
    for c in word.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Joins argv into one shell command line, every word quoted as needed.
pub fn join<S: AsRef<str>>(argv: &[S]) -> String {
    argv.iter()
        .map(|w| quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_stay_plain() {
        assert_eq!(quote("tank/a@snap-1_x:y.z"), "tank/a@snap-1_x:y.z");
        assert_eq!(quote("src/data#mark"), "src/data#mark");
    }

    #[test]
    fn hostile_words_are_quoted() {
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(quote("a;b"), "'a;b'");
        assert_eq!(quote("`x`"), "'`x`'");
        assert_eq!(quote("#comment"), "'#comment'");
        assert_eq!(join(&["zfs", "list", "a b"]), "zfs list 'a b'");
    }
}
