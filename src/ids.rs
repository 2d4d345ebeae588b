//! The identifiers containerd, CRI-O and pod specs hand the shim (sandbox,
//! container and exec ids), checked once before any of them becomes part
//! of a host path, a QEMU argument or a guest request.

/// An identifier that breaks containerd's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid id {id:?}: {why}")]
pub struct InvalidId {
    pub id: String,
    pub why: &'static str,
}

/// containerd's identifier rules: alphanumerics with single `.`, `_` or `-`
/// between them, at most 76 characters. Nothing that passes can climb out
/// of a directory or split an argument.
pub fn validate(id: &str) -> Result<(), InvalidId> {
    let bad = |why| {
        Err(InvalidId {
            id: id.to_string(),
            why,
        })
    };
    if id.is_empty() {
        return bad("it is empty");
    }
    if id.len() > 76 {
        return bad("it is longer than 76 characters");
    }
    let mut prev_sep = true;
    for c in id.chars() {
        let sep = matches!(c, '.' | '_' | '-');
        if !(c.is_ascii_alphanumeric() || sep) {
            return bad("only letters, digits, '.', '_' and '-' are allowed");
        }
        if sep && prev_sep {
            return bad("separators must sit between letters or digits");
        }
        prev_sep = sep;
    }
    if prev_sep {
        return bad("it must end with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "abc123", "a.b_c-d", "0123456789abcdef0123456789abcdef"] {
            validate(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let long = "a".repeat(77);
        for bad in [
            "",
            "-a",
            "a-",
            "a--b",
            "a/b",
            "../x",
            "a b",
            "a\0b",
            long.as_str(),
            "ä",
        ] {
            assert!(validate(bad).is_err(), "{bad:?} accepted");
        }
    }
}
