//! Django's common-password list (`CommonPasswordValidator`).
//!
//! `common-passwords.txt` is Django 5.2's
//! `django/contrib/auth/common-passwords.txt.gz` (BSD-3-Clause, the 20,000
//! most common passwords of Royce Williams' list, lowercased), stripped,
//! deduplicated and sorted by bytes, one per line. It is embedded as one
//! string and searched in place: no table of pointers to relocate at
//! start-up, no copy on the heap.

/// The list: sorted by bytes, each entry followed by `\n`.
const LIST: &str = include_str!("common-passwords.txt");

/// Whether `candidate` (already lowercased and stripped, as Django does) is
/// on Django's list.
pub fn is_common(candidate: &str) -> bool {
    search(LIST.as_bytes(), candidate.as_bytes())
}

/// Binary search over the newline-separated, byte-sorted `lines`.
fn search(lines: &[u8], needle: &[u8]) -> bool {
    // `lo` is always the start of a line, `hi` the end of the range.
    let (mut lo, mut hi) = (0, lines.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let start = lines[lo..mid]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(lo, |p| lo + p + 1);
        let end = lines[start..hi]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(hi, |p| start + p);
        match lines[start..end].cmp(needle) {
            std::cmp::Ordering::Equal => return true,
            std::cmp::Ordering::Less => lo = end + 1,
            std::cmp::Ordering::Greater => hi = start,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_found_and_the_list_is_sorted() {
        let entries: Vec<&str> = LIST.lines().collect();
        assert_eq!(entries.len(), 19_640);
        assert!(entries.windows(2).all(|w| w[0] < w[1]));
        assert!(entries.iter().all(|e| is_common(e)));
    }

    #[test]
    fn near_misses_are_not_common() {
        for entry in LIST.lines().take(500) {
            assert!(!is_common(&format!("{entry}\u{1}")), "{entry}");
            // Every prefix is found exactly when it is an entry itself.
            for cut in 1..entry.len() {
                if let Some(prefix) = entry.get(..cut) {
                    assert_eq!(is_common(prefix), LIST.lines().any(|e| e == prefix));
                }
            }
        }
        for word in [
            "",
            "Password",
            "password1X",
            "zzzzzzzzzzzzzzzzzzzz",
            "\u{1}",
            "correct horse battery staple",
        ] {
            assert!(!is_common(word), "{word}");
        }
        assert!(is_common("password"));
        assert!(is_common("123456"));
    }

    #[test]
    fn search_handles_edges() {
        assert!(!search(b"", b"a"));
        assert!(search(b"a\n", b"a"));
        assert!(search(b"a\nb\nc", b"c"));
        assert!(!search(b"a\nb\nc", b"bb"));
        assert!(!search(b"b\nc\n", b"a"));
        assert!(!search(b"b\nc\n", b"d"));
    }
}
