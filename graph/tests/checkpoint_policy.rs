//! Policy strings and byte sizes: round trips, units, and errors that
//! name what is wrong and the accepted forms.

use adjoint_graph::Error;
use adjoint_graph::checkpoint::{POLICY_FORMS, Policy, format_bytes, parse_bytes};

#[test]
fn policies_round_trip() {
    let cases = [
        ("none", Policy::None),
        ("every:1", Policy::Every(1)),
        ("every:4", Policy::Every(4)),
        ("sqrt", Policy::Sqrt),
        ("selective", Policy::Selective),
        ("budget:2GiB", Policy::Budget(2 << 30)),
        ("budget:1500MB", Policy::Budget(1_500_000_000)),
        ("budget:123", Policy::Budget(123)),
        (" Budget : 4 KiB ", Policy::Budget(4096)),
        ("SQRT", Policy::Sqrt),
    ];
    for (text, want) in cases {
        let p: Policy = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(p, want, "{text}");
        assert_eq!(p.to_string().parse::<Policy>().unwrap(), p, "{text}");
    }
    assert_eq!(Policy::Budget(2 << 30).to_string(), "budget:2147483648");
    assert_eq!(Policy::Every(3).to_string(), "every:3");
}

#[test]
fn bad_policies_name_the_problem_and_the_forms() {
    let cases = [
        ("", "empty"),
        ("fast", "unknown policy 'fast'"),
        ("every", "needs an argument"),
        ("every:0", "K >= 1"),
        ("every:two", "'two'"),
        ("budget:", "budget"),
        ("budget:2TB", "unknown unit 'TB'"),
        ("budget:lots", "not a byte size"),
        ("sqrt:3", "takes no argument"),
    ];
    for (text, needle) in cases {
        let err = text.parse::<Policy>().unwrap_err();
        assert!(
            matches!(&err, Error::BadPolicy { input, .. } if input == text),
            "{text}: {err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(needle), "{text}: '{msg}' lacks '{needle}'");
        assert!(
            msg.contains(POLICY_FORMS),
            "{text}: '{msg}' lacks the forms"
        );
    }
}

#[test]
fn byte_sizes() {
    assert_eq!(parse_bytes("2GiB"), Ok(2 * 1024 * 1024 * 1024));
    assert_eq!(parse_bytes("2GB"), Ok(2_000_000_000));
    assert_eq!(parse_bytes("64 MiB"), Ok(64 << 20));
    assert_eq!(parse_bytes("10KB"), Ok(10_000));
    assert_eq!(parse_bytes("10KiB"), Ok(10_240));
    assert_eq!(parse_bytes("0.5MiB"), Ok(512 << 10));
    assert_eq!(parse_bytes("4096"), Ok(4096));
    assert_eq!(parse_bytes("17B"), Ok(17));
    for bad in ["", "GiB", "2 gigs", "-1", "1.5", "99999999999999999999999"] {
        let err = parse_bytes(bad).unwrap_err();
        assert!(err.contains(&format!("'{bad}'")), "{bad}: {err}");
    }
    assert_eq!(format_bytes(2 << 30), "2.00 GiB");
    assert_eq!(format_bytes(512), "512 B");
}
