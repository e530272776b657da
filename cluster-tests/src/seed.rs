//! The one seed of a randomized test: from `STARLING_SEED` when replaying, else fresh; printed
//! either way with the command that replays it.

/// Returns the run's seed and prints how to replay it; `test_name` is the test function's name.
pub fn test_seed(test_name: &str) -> u64 {
    let seed = match std::env::var("STARLING_SEED") {
        Ok(text) => parse_seed(&text)
            .unwrap_or_else(|| panic!("STARLING_SEED={text:?} is not a u64 (decimal or 0x-hex)")),
        Err(_) => rand::random(),
    };
    eprintln!(
        "seed = {seed:#x}; replay with: \
         STARLING_SEED={seed:#x} scripts/test.sh -p starling-cluster-tests {test_name}"
    );
    seed
}

fn parse_seed(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_seed;

    #[test]
    fn seeds_parse_as_decimal_or_hex() {
        assert_eq!(parse_seed("42"), Some(42));
        assert_eq!(parse_seed("0x2a"), Some(42));
        assert_eq!(parse_seed("nope"), None);
    }
}
