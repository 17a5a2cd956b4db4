//! One version number for the module, the client and the tool: the
//! workspace's, as `MODULE LIST` (an integer), `INFO lock` and `redis-lock
//! --version` show it. Pure: computed at compile time.

/// The version, `major.minor.patch`, as in `Cargo.toml`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The version as `MODULE LIST` reports it, the way Redis numbers its own
/// modules: `major * 10000 + minor * 100 + patch` (0.1.0 is 100, 1.2.3 is
/// 10203).
pub const MODULE_VERSION: i32 = module_version(VERSION);

/// `major * 10000 + minor * 100 + patch` of a `major.minor.patch[-pre]`
/// string (a pre-release suffix is ignored; a part above 99 saturates).
/// Evaluated at compile time, where an out-of-bounds index would be a build
/// error, never a panic in the server.
#[allow(clippy::indexing_slicing)]
const fn module_version(v: &str) -> i32 {
    let bytes = v.as_bytes();
    let mut parts = [0i32; 3];
    let mut part = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'.' {
            part += 1;
            if part == 3 {
                break;
            }
        } else if b.is_ascii_digit() {
            let next = parts[part] * 10 + (b - b'0') as i32;
            parts[part] = if next > 99 { 99 } else { next };
        } else {
            break;
        }
        i += 1;
    }
    parts[0] * 10000 + parts[1] * 100 + parts[2]
}

/// The `major.minor.patch` that [`module_version`] encoded.
pub fn from_module_version(n: i64) -> String {
    format!("{}.{}.{}", n / 10000, n / 100 % 100, n % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_encode_the_way_redis_modules_do() {
        for (text, n) in [
            ("0.1.0", 100),
            ("1.2.3", 10203),
            ("2.0.8", 20008),
            ("10.20.30", 102030),
            ("1.2.3-rc.1", 10203),
            ("0.0.0", 0),
        ] {
            assert_eq!(module_version(text), n, "{text}");
        }
        assert_eq!(from_module_version(10203), "1.2.3");
        assert_eq!(from_module_version(i64::from(MODULE_VERSION)), VERSION);
    }
}
