//! Shell-style globs for `enable_annotations` and the `valid_*_paths`
//! lists, with the semantics of Go's `filepath.Match` (which Kata uses):
//! `*` is any run of characters other than `/`, `?` is one character other
//! than `/`, `[abc]`, `[a-z]` and `[!a-z]` are classes, `\` escapes.
//! A pattern matches the whole text. Matching is a dynamic programme over
//! (pattern, text) positions, so it is quadratic at worst, never exponential,
//! and iterative, so it never recurses on its input.

/// Why a pattern cannot be used.
pub fn check(pattern: &str) -> Result<(), String> {
    let p: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '[' => match class_len(&p[i..]) {
                Some(n) => i += n,
                None => return Err(format!("{pattern:?} has an unterminated `[` class")),
            },
            '\\' if i + 1 == p.len() => {
                return Err(format!("{pattern:?} ends with a lone `\\`"));
            }
            '\\' => i += 2,
            _ => i += 1,
        }
    }
    Ok(())
}

/// Whether `text` matches `pattern` as a whole. An invalid pattern matches
/// nothing.
///
/// Iterative, one row of text positions per pattern element, so neither
/// the pattern nor the text (an annotation key a pod chooses) can make it
/// recurse: a recursive match overflowed a worker thread's stack on a key
/// of 22,000 characters.
pub fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // row[ti]: the pattern so far matches t[..ti].
    let mut row = vec![false; t.len() + 1];
    row[0] = true;
    let mut pi = 0;
    while pi < p.len() {
        let mut next = vec![false; t.len() + 1];
        if p[pi] == '*' {
            // The star takes any run of characters other than `/`.
            next[0] = row[0];
            for ti in 1..=t.len() {
                next[ti] = row[ti] || (next[ti - 1] && t[ti - 1] != '/');
            }
            pi += 1;
        } else {
            let (len, one): (usize, Box<dyn Fn(char) -> bool>) = match p[pi] {
                '?' => (1, Box::new(|c| c != '/')),
                '[' => match class_len(&p[pi..]) {
                    Some(n) => {
                        let class = &p[pi..pi + n];
                        (n, Box::new(move |c| c != '/' && class_matches(class, c)))
                    }
                    None => return false,
                },
                '\\' if pi + 1 < p.len() => {
                    let lit = p[pi + 1];
                    (2, Box::new(move |c| c == lit))
                }
                '\\' => return false,
                lit => (1, Box::new(move |c| c == lit)),
            };
            for ti in 1..=t.len() {
                next[ti] = row[ti - 1] && one(t[ti - 1]);
            }
            pi += len;
        }
        row = next;
        if !row.contains(&true) {
            return false;
        }
    }
    row[t.len()]
}

/// Length of the class starting at `p[0] == '['`, closing `]` included.
fn class_len(p: &[char]) -> Option<usize> {
    let mut i = 1;
    if matches!(p.get(i), Some('!' | '^')) {
        i += 1;
    }
    let first = i;
    while i < p.len() {
        match p[i] {
            ']' if i > first => return Some(i + 1),
            '\\' => i += 2,
            _ => i += 1,
        }
    }
    None
}

/// Whether `c` is in the class `p` (`[` ... `]`, as [`class_len`] found it).
fn class_matches(p: &[char], c: char) -> bool {
    let body = &p[1..p.len() - 1];
    let (negated, body) = match body.first() {
        Some('!' | '^') => (true, &body[1..]),
        _ => (false, body),
    };
    let mut items = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let ch = if body[i] == '\\' && i + 1 < body.len() {
            i += 1;
            body[i]
        } else {
            body[i]
        };
        items.push(ch);
        i += 1;
    }
    let mut found = false;
    let mut j = 0;
    while j < items.len() {
        if j + 2 < items.len() && items[j + 1] == '-' {
            found |= (items[j]..=items[j + 2]).contains(&c);
            j += 3;
        } else {
            found |= items[j] == c;
            j += 1;
        }
    }
    found != negated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_go_filepath_match() {
        let cases = [
            (
                "/usr/bin/qemu-system-x86_64",
                "/usr/bin/qemu-system-x86_64",
                true,
            ),
            ("/usr/bin/qemu-*", "/usr/bin/qemu-system-x86_64", true),
            ("/usr/bin/*", "/usr/bin/sub/qemu", false),
            ("/usr/*/qemu", "/usr/bin/qemu", true),
            ("/opt/kata/*.kernel", "/opt/kata/6.12.kernel", true),
            ("/opt/kata/*.kernel", "/opt/kata/6.12.initrd", false),
            ("/opt/kata/kata.?ernel", "/opt/kata/kata.kernel", true),
            ("/opt/kata/v[0-9]", "/opt/kata/v7", true),
            ("/opt/kata/v[!0-9]", "/opt/kata/v7", false),
            ("/opt/kata/v[!0-9]", "/opt/kata/vx", true),
            ("/a/\\*", "/a/*", true),
            ("/a/\\*", "/a/b", false),
            ("default_*", "default_vcpus", true),
            ("default_*", "kernel_params", false),
            ("*", "kernel_params", true),
            ("*", "", true),
            ("", "", true),
            ("", "x", false),
            ("/a/[", "/a/[", false),
            ("a*a*a*a*a*a*a*b", &"a".repeat(200), false),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(matches(pattern, text), want, "{pattern:?} vs {text:?}");
        }
    }

    #[test]
    fn bad_patterns_are_named() {
        assert!(check("/usr/bin/[abc").is_err());
        assert!(check("/usr/bin/x\\").is_err());
        assert!(check("/usr/bin/[]]").is_ok());
        assert!(check("/usr/*/qemu-[a-z]?").is_ok());
    }
}
