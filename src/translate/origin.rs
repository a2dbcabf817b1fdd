//! Loop prevention: the origin stamp every bridged message carries.
//!
//! With routes in both directions on the same topic names, a message the
//! bridge wrote into a cluster would be read there again and sent back. So
//! every bridged message carries a user property (default `bridge_origin`)
//! listing, in hop order, the clusters it was bridged out of, comma
//! separated: a message born on 4.x and bridged to 5.x carries `4.x`. A
//! route never sends a message whose stamp names the route's destination
//! (it came from there), and a route appends its own source to the stamp,
//! so the stamp survives every hop: a 4.x -> 5.x -> 4.x message is
//! recognised on 5.x and skipped, and so is a 5.x -> 4.x -> 5.x one.
//!
//! The stamp is a user property because user properties are what both
//! protocols carry through byte for byte (translate keeps them in both
//! directions); cluster names come from `[source] cluster_name` and
//! `[target] cluster_name`, which config validation keeps distinct and
//! free of commas.
//!
//! Pure: no I/O, no clock.

/// One route's stamp: the property, and the clusters on either side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginStamp {
    pub property: String,
    /// The cluster the route reads.
    pub source: String,
    /// The cluster the route writes.
    pub destination: String,
}

/// The clusters a stamp value names, in hop order (blank entries ignored).
pub fn clusters(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|c| !c.is_empty())
}

/// Whether a message whose stamp is `value` (None: unstamped) came from
/// the route's destination, at any hop: sending it would close a loop.
pub fn looped(value: Option<&str>, stamp: &OriginStamp) -> bool {
    value.is_some_and(|v| clusters(v).any(|c| c == stamp.destination))
}

/// The stamp a message leaves the route with: the one it carries plus the
/// route's source, unless that is already its last hop.
pub fn stamped(value: Option<&str>, stamp: &OriginStamp) -> String {
    // Every message born in the source cluster: no parsing, one copy.
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        return stamp.source.clone();
    };
    let mut hops: Vec<&str> = clusters(value).collect();
    if hops.last() != Some(&stamp.source.as_str()) {
        hops.push(&stamp.source);
    }
    hops.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(source: &str, destination: &str) -> OriginStamp {
        OriginStamp {
            property: "bridge_origin".into(),
            source: source.into(),
            destination: destination.into(),
        }
    }

    /// Carries a message over `hops` (source, destination) in order: Some
    /// (its final stamp) when every hop sends it, None when a hop skips it.
    fn travel(hops: &[(&str, &str)]) -> Result<String, usize> {
        let mut value: Option<String> = None;
        for (i, (s, d)) in hops.iter().enumerate() {
            let r = route(s, d);
            if looped(value.as_deref(), &r) {
                return Err(i);
            }
            value = Some(stamped(value.as_deref(), &r));
        }
        Ok(value.unwrap_or_default())
    }

    #[test]
    fn a_message_born_on_either_side_crosses_once_and_is_not_sent_back() {
        // 4.x -> 5.x, then the reverse route reads it on 5.x: skipped.
        assert_eq!(travel(&[("4.x", "5.x")]), Ok("4.x".into()));
        assert_eq!(travel(&[("4.x", "5.x"), ("5.x", "4.x")]), Err(1));
        // 5.x -> 4.x, then the forward route reads it on 4.x: skipped.
        assert_eq!(travel(&[("5.x", "4.x")]), Ok("5.x".into()));
        assert_eq!(travel(&[("5.x", "4.x"), ("4.x", "5.x")]), Err(1));
    }

    #[test]
    fn the_stamp_survives_every_hop_through_a_third_cluster() {
        // 4.x -> 5.x -> dr (another bridge) -> back to 4.x or 5.x: skipped.
        assert_eq!(
            travel(&[("4.x", "5.x"), ("5.x", "dr")]),
            Ok("4.x,5.x".into())
        );
        assert_eq!(
            travel(&[("4.x", "5.x"), ("5.x", "dr"), ("dr", "4.x")]),
            Err(2)
        );
        assert_eq!(
            travel(&[("4.x", "5.x"), ("5.x", "dr"), ("dr", "5.x")]),
            Err(2)
        );
        // Every order of two hops among three clusters: the second hop is
        // refused exactly when it returns to the first hop's source.
        let names = ["a", "b", "c"];
        for s in names {
            for d in names.iter().filter(|d| **d != s) {
                for d2 in names.iter().filter(|x| *x != d) {
                    let got = travel(&[(s, d), (d, d2)]);
                    assert_eq!(got.is_err(), *d2 == s, "{s}->{d}->{d2}: {got:?}");
                }
            }
        }
    }

    #[test]
    fn an_unstamped_or_foreign_stamp_passes_and_a_repeat_hop_is_not_doubled() {
        let r = route("4.x", "5.x");
        assert!(!looped(None, &r));
        assert!(!looped(Some(""), &r));
        assert!(
            !looped(Some("5.x-staging"), &r),
            "names match whole, not as prefixes"
        );
        assert!(looped(Some(" 5.x , 4.x"), &r));
        assert_eq!(stamped(Some("4.x"), &r), "4.x");
        assert_eq!(stamped(Some("dr, "), &r), "dr,4.x");
    }
}
