//! Names of users, machines, sessions and targets: short and plain, checked before any work.

/// The longest name accepted.
pub const MAX_NAME: usize = 64;

/// Letters, digits, `- _ . @`; 1 to 64 characters.
pub fn valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

/// The form two names are compared in: `Tech1` and `tech1` are the same user.
pub fn fold(name: &str) -> String {
    name.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_only() {
        assert!(valid("tech1"));
        assert!(valid("a.b-c_d@e"));
        assert!(!valid(""));
        assert!(!valid(&"x".repeat(65)));
        assert!(valid(&"x".repeat(64)));
        for bad in ["a b", "a\nb", "a\u{0}b", "ä", "a/b", "a'b", "a;b"] {
            assert!(!valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn case_folds() {
        assert_eq!(fold("Tech1"), fold("tech1"));
    }
}
