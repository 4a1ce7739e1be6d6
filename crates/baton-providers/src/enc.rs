//! Claude Code's project-directory name for a working directory (`enc`), also used by the
//! `scripted` provider so that moving a session exercises the same renaming.

/// Longest sanitized name kept verbatim; longer names are cut and get a hash suffix.
const MAX_PLAIN: usize = 200;

/// The project-directory name for an absolute working directory, exactly as Claude Code computes
/// it: every UTF-16 code unit that is not ASCII alphanumeric becomes `-`; a result longer than
/// 200 units keeps its first 200 and gets `-` plus base 36 of |Java `hashCode`| of `path`.
pub fn enc(path: &str) -> String {
    // Claude works on UTF-16 code units, so a non-BMP character (two units) becomes `--`.
    let units: Vec<u16> = path.encode_utf16().collect();
    let sanitized: String = units
        .iter()
        .map(|&u| match u8::try_from(u) {
            Ok(b) if b.is_ascii_alphanumeric() => char::from(b),
            _ => '-',
        })
        .collect();
    if sanitized.len() <= MAX_PLAIN {
        return sanitized;
    }
    let mut out = String::with_capacity(MAX_PLAIN + 8);
    // The sanitized string is pure ASCII, so byte and unit indices agree.
    out.push_str(&sanitized[..MAX_PLAIN]);
    out.push('-');
    out.push_str(&base36_abs(java_hash(&units)));
    out
}

/// Java's `String.hashCode` over UTF-16 code units, with i32 wrap-around.
fn java_hash(units: &[u16]) -> i32 {
    units.iter().fold(0i32, |h, &u| {
        h.wrapping_shl(5).wrapping_sub(h).wrapping_add(i32::from(u))
    })
}

/// Base 36 (lowercase) of |h|, as JavaScript's `Math.abs(h).toString(36)`: computed in i64 so
/// that `i32::MIN` gives 2147483648 instead of overflowing.
fn base36_abs(h: i32) -> String {
    let mut n = i64::from(h).unsigned_abs();
    if n == 0 {
        return "0".to_string();
    }
    let mut digits = Vec::new();
    while n > 0 {
        let d = (n % 36) as u8;
        digits.push(if d < 10 { b'0' + d } else { b'a' + d - 10 });
        n /= 36;
    }
    digits.reverse();
    String::from_utf8(digits).expect("base 36 digits are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values for paths over 200 units were computed independently with a Node.js
    // script implementing Claude's algorithm in JavaScript: `p.replace(/[^a-zA-Z0-9]/g, "-")`,
    // `e = (e << 5) - e + p.charCodeAt(i); e |= 0`, `Math.abs(e).toString(36)`.

    #[test]
    fn reference_vectors() {
        assert_eq!(enc("/home/dev/ws/my_proj.v2"), "-home-dev-ws-my-proj-v2");
        assert_eq!(enc("/home/dev/ws/spa ce/ünï"), "-home-dev-ws-spa-ce--n-");
    }

    #[test]
    fn exactly_200_units_is_kept_plain() {
        let p = format!("/x/{}", "a".repeat(197));
        assert_eq!(enc(&p), format!("-x-{}", "a".repeat(197)));
    }

    #[test]
    fn over_200_units_gets_hash_suffix() {
        // Node: 201 units, hashCode 1122587399.
        let p = format!("/x/{}b", "a".repeat(197));
        assert_eq!(enc(&p), format!("-x-{}-ikcxzb", "a".repeat(197)));

        // Node: 242 units, hashCode 2100952333.
        let p = format!("/home/dev/{}end.dir", "very_long_directory_name_".repeat(9));
        let e = enc(&p);
        assert!(e.starts_with("-home-dev-very-long-directory-name-very"));
        assert!(e.ends_with("-very-long-direc-yqup71"), "{e}");
        assert_eq!(e.len(), 200 + 1 + "yqup71".len());
    }

    #[test]
    fn negative_hash_uses_absolute_value() {
        // Node: 220 units, hashCode -1030268546.
        let p = format!("/home/dev/projects/{}x", "deep/".repeat(40));
        assert!(enc(&p).ends_with("eep-d-h1e8aq"), "{}", enc(&p));
    }

    #[test]
    fn non_bmp_counts_two_units() {
        // Node: 234 units (each 😀 is a surrogate pair), hashCode 863875759.
        let p = format!("/home/dév/{}tail", "ünïcode-😀-".repeat(20));
        let e = enc(&p);
        assert!(e.starts_with("-home-d-v--n-code-----n-code-"), "{e}");
        assert!(e.ends_with("-n-code-----n--eabusv"), "{e}");
    }

    #[test]
    fn i32_min_hash_does_not_overflow() {
        // Found by a Node search: the last two units (U+FFFF, U+E41C) make hashCode == -2^31,
        // and JavaScript prints Math.abs(-2147483648).toString(36) == "zik0zk".
        let p = format!("/srv/{}/4hh/\u{ffff}\u{e41c}", "p".repeat(200));
        assert_eq!(java_hash(&p.encode_utf16().collect::<Vec<_>>()), i32::MIN);
        assert_eq!(enc(&p), format!("-srv-{}-zik0zk", "p".repeat(195)));
        assert_eq!(base36_abs(i32::MIN), "zik0zk");
        assert_eq!(base36_abs(0), "0");
        assert_eq!(base36_abs(-35), "z");
    }
}
