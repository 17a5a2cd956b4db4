//! The module's settings (`lock.*`): their defaults and bounds, shared by
//! the registration (which `CONFIG SET` checks against) and by the check of
//! module load arguments (`--loadmodule libredis_lock.so name value ...`),
//! which Redis leaves to the module. Pure: works on byte slices.

use crate::pure::args::{parse_i64, printable, TTL_CEILING_MS};
use crate::pure::rejoin::AUTO;

/// One integer setting, `lock.<name>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// Without the `lock.` prefix, as on the `loadmodule` line.
    pub name: &'static str,
    pub default: i64,
    pub min: i64,
    pub max: i64,
}

pub const MAX_TTL_MS: Setting = Setting {
    name: "max-ttl-ms",
    // Five minutes: leases are renewed every third of their TTL, so a long
    // job needs no long TTL, and this is also how long a node restarted
    // without its grants refuses new ones.
    default: 300_000,
    min: 1,
    max: TTL_CEILING_MS,
};

pub const MAX_HOLD_MS: Setting = Setting {
    name: "max-hold-ms",
    default: 0,
    min: 0,
    max: TTL_CEILING_MS,
};

pub const REJOIN_DELAY_MS: Setting = Setting {
    name: "rejoin-delay-ms",
    default: AUTO,
    min: AUTO,
    max: TTL_CEILING_MS,
};

pub const MAX_WAITERS: Setting = Setting {
    name: "max-waiters",
    default: 10_000,
    min: 0,
    max: 1_000_000_000,
};

pub const PROMOTION_DELAY_MS: Setting = Setting {
    name: "promotion-delay-ms",
    default: 0,
    min: AUTO,
    max: TTL_CEILING_MS,
};

/// Every setting, in the order `INFO`/`CONFIG GET lock.*` lists them.
pub const ALL: [Setting; 5] = [
    MAX_TTL_MS,
    MAX_HOLD_MS,
    REJOIN_DELAY_MS,
    MAX_WAITERS,
    PROMOTION_DELAY_MS,
];

/// The module load arguments as settings and values, checked as `CONFIG
/// SET` checks them: name/value pairs, each name a known setting given at
/// most once, each value a strict integer within the setting's bounds.
/// The error (logged by the caller, which then fails the load) names the
/// argument at fault.
pub fn load_args(args: &[&[u8]]) -> Result<Vec<(Setting, i64)>, String> {
    let mut out: Vec<(Setting, i64)> = Vec::with_capacity(args.len() / 2);
    let mut rest = args;
    while let [name, tail @ ..] = rest {
        let Some(setting) = ALL
            .iter()
            .find(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
        else {
            let known: Vec<&str> = ALL.iter().map(|s| s.name).collect();
            return Err(format!(
                "invalid load argument {}: not a setting of this module (settings: {})",
                printable(name),
                known.join(", ")
            ));
        };
        let Some((value, tail)) = tail.split_first() else {
            return Err(format!(
                "invalid load argument {}: no value given",
                setting.name
            ));
        };
        if out.iter().any(|(s, _)| s.name == setting.name) {
            return Err(format!(
                "invalid load argument {}: given more than once",
                setting.name
            ));
        }
        match parse_i64(value) {
            Some(v) if (setting.min..=setting.max).contains(&v) => out.push((*setting, v)),
            _ => {
                return Err(format!(
                    "invalid load argument {} {}: must be an integer from {} to {} \
                     (the bounds of CONFIG SET lock.{})",
                    setting.name,
                    printable(value),
                    setting.min,
                    setting.max,
                    setting.name
                ))
            }
        }
        rest = tail;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<&[u8]> {
        line.split_whitespace().map(str::as_bytes).collect()
    }

    #[test]
    fn good_load_arguments_are_read() {
        let cases: &[(&str, &[(&str, i64)])] = &[
            ("", &[]),
            ("max-ttl-ms 5000", &[("max-ttl-ms", 5000)]),
            (
                "rejoin-delay-ms -1 max-waiters 0 MAX-HOLD-MS 10",
                &[
                    ("rejoin-delay-ms", -1),
                    ("max-waiters", 0),
                    ("max-hold-ms", 10),
                ],
            ),
            (
                "max-ttl-ms 315360000000",
                &[("max-ttl-ms", 315_360_000_000)],
            ),
            ("max-ttl-ms 1", &[("max-ttl-ms", 1)]),
            ("promotion-delay-ms -1", &[("promotion-delay-ms", -1)]),
            ("max-waiters 1000000000", &[("max-waiters", 1_000_000_000)]),
        ];
        for (line, expected) in cases {
            let got: Vec<(&str, i64)> = load_args(&argv(line))
                .unwrap_or_else(|e| panic!("{line}: {e}"))
                .into_iter()
                .map(|(s, v)| (s.name, v))
                .collect();
            assert_eq!(got, *expected, "{line}");
        }
    }

    #[test]
    fn bad_load_arguments_are_refused_naming_the_argument() {
        let cases: &[(&str, &str)] = &[
            (
                "rejoin-delay-ms -7",
                "invalid load argument rejoin-delay-ms -7: must be an integer from -1 to 315360000000 (the bounds of CONFIG SET lock.rejoin-delay-ms)",
            ),
            ("max-ttl-ms 0", "invalid load argument max-ttl-ms 0: must be an integer from 1 to"),
            ("max-ttl-ms -5", "invalid load argument max-ttl-ms -5:"),
            (
                "max-ttl-ms 9223372036854775807",
                "invalid load argument max-ttl-ms 9223372036854775807:",
            ),
            ("max-ttl-ms 315360000001", "invalid load argument max-ttl-ms 315360000001:"),
            ("max-ttl-ms 12s", "invalid load argument max-ttl-ms 12s:"),
            ("max-ttl-ms +5", "invalid load argument max-ttl-ms +5:"),
            ("max-ttl-ms 05", "invalid load argument max-ttl-ms 05:"),
            ("max-waiters -3", "invalid load argument max-waiters -3: must be an integer from 0 to 1000000000"),
            ("max-waiters 1000000001", "invalid load argument max-waiters 1000000001:"),
            ("max-hold-ms -1", "invalid load argument max-hold-ms -1: must be an integer from 0"),
            ("promotion-delay-ms -2", "invalid load argument promotion-delay-ms -2:"),
            (
                "bogus 1",
                "invalid load argument bogus: not a setting of this module (settings: max-ttl-ms, max-hold-ms, rejoin-delay-ms, max-waiters, promotion-delay-ms)",
            ),
            ("lock.max-ttl-ms 5000", "invalid load argument lock.max-ttl-ms: not a setting"),
            ("max-ttl-ms", "invalid load argument max-ttl-ms: no value given"),
            ("max-ttl-ms 5000 max-hold-ms", "invalid load argument max-hold-ms: no value given"),
            (
                "max-ttl-ms 5000 max-ttl-ms 6000",
                "invalid load argument max-ttl-ms: given more than once",
            ),
            (
                "max-ttl-ms 5000 MAX-TTL-MS 5000",
                "invalid load argument max-ttl-ms: given more than once",
            ),
        ];
        for (line, expected) in cases {
            let err = load_args(&argv(line)).expect_err(line);
            assert!(err.starts_with(expected), "{line}: got '{err}'");
        }
        let err = load_args(&[b"\xff\n", b"1"]).unwrap_err();
        assert!(
            err.starts_with("invalid load argument \\xff\\x0a:"),
            "{err}"
        );
    }

    #[test]
    fn defaults_are_within_their_bounds() {
        for s in ALL {
            assert!((s.min..=s.max).contains(&s.default), "{s:?}");
        }
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn word() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                proptest::sample::select(ALL.map(|s| s.name.as_bytes().to_vec()).to_vec()),
                any::<i64>().prop_map(|n| n.to_string().into_bytes()),
                (-3i64..3).prop_map(|n| n.to_string().into_bytes()),
                proptest::collection::vec(any::<u8>(), 0..20),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(5_000))]

            /// Whatever is accepted is within the bounds, once per setting.
            #[test]
            fn accepted_arguments_are_within_bounds(
                words in proptest::collection::vec(word(), 0..12),
            ) {
                let args: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
                if let Ok(values) = load_args(&args) {
                    prop_assert_eq!(values.len() * 2, args.len());
                    for (i, (s, v)) in values.iter().enumerate() {
                        prop_assert!((s.min..=s.max).contains(v));
                        prop_assert!(values.iter().skip(i + 1).all(|(t, _)| t.name != s.name));
                    }
                }
            }
        }
    }
}
