//! Loop prevention: the origin stamp every bridged message carries.
//!
//! With routes in both directions on the same topic names, a message the
//! bridge wrote into a cluster would be read there again and sent back. So
//! every bridged message carries a user property (default `bridge_origin`)
//! listing, in hop order, the clusters it was bridged out of, comma
//! separated, and the id of the message it was put on after a `#`: a
//! message born on 4.x with id X and bridged to 5.x carries `4.x#X`.
//!
//! A route never sends a message whose stamp names the route's destination
//! (it came from there) or the route's source (it already left that cluster
//! once and came back by another way, e.g. a second deployment that names
//! the clusters differently), and a route appends its own source to the
//! stamp, so the stamp survives every hop.
//!
//! The stamp belongs to the message it was put on: bridged copies keep
//! their message id on every hop, while an application that publishes a new
//! message copying another one's user properties gives it a new id. A stamp
//! whose id is not the message's own is such a copy's: ignored, and the
//! message is stamped afresh. A stamp without an id (written before ids
//! were added) is taken as the message's own.
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

/// Separates the clusters of a stamp from the id it belongs to.
const ID_SEPARATOR: char = '#';

/// The clusters a stamp value names, in hop order (blank entries ignored),
/// without the id.
pub fn clusters(value: &str) -> impl Iterator<Item = &str> {
    let hops = value.split(ID_SEPARATOR).next().unwrap_or_default();
    hops.split(',').map(str::trim).filter(|c| !c.is_empty())
}

/// The stamp of message `id`, if `value` is its own: None for no stamp, a
/// blank one, or a stamp copied from another message (its id differs).
fn own<'a>(value: Option<&'a str>, id: &str) -> Option<&'a str> {
    let value = value.filter(|v| !v.trim().is_empty())?;
    match value.split_once(ID_SEPARATOR) {
        Some((_, stamped_for)) if stamped_for.trim() != id => None,
        _ => Some(value),
    }
}

/// Whether message `id`, whose stamp is `value` (None: unstamped), was
/// bridged out of the route's destination or out of its source before:
/// sending it would close a loop.
pub fn looped(value: Option<&str>, id: &str, stamp: &OriginStamp) -> bool {
    own(value, id).is_some_and(|v| clusters(v).any(|c| c == stamp.destination || c == stamp.source))
}

/// The stamp message `id` leaves the route with: the clusters of its own
/// stamp plus the route's source (unless that is already its last hop),
/// bound to `id`.
pub fn stamped(value: Option<&str>, id: &str, stamp: &OriginStamp) -> String {
    let mut hops: Vec<&str> = own(value, id)
        .map(|v| clusters(v).collect())
        .unwrap_or_default();
    if hops.last() != Some(&stamp.source.as_str()) {
        hops.push(&stamp.source);
    }
    format!("{}{ID_SEPARATOR}{id}", hops.join(","))
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
            if looped(value.as_deref(), ID, &r) {
                return Err(i);
            }
            value = Some(stamped(value.as_deref(), ID, &r));
        }
        Ok(value.unwrap_or_default())
    }

    const ID: &str = "7F0000010000A1B2";

    #[test]
    fn a_message_born_on_either_side_crosses_once_and_is_not_sent_back() {
        // 4.x -> 5.x, then the reverse route reads it on 5.x: skipped.
        assert_eq!(travel(&[("4.x", "5.x")]), Ok(format!("4.x#{ID}")));
        assert_eq!(travel(&[("4.x", "5.x"), ("5.x", "4.x")]), Err(1));
        // 5.x -> 4.x, then the forward route reads it on 4.x: skipped.
        assert_eq!(travel(&[("5.x", "4.x")]), Ok(format!("5.x#{ID}")));
        assert_eq!(travel(&[("5.x", "4.x"), ("4.x", "5.x")]), Err(1));
    }

    #[test]
    fn the_stamp_survives_every_hop_through_a_third_cluster() {
        // 4.x -> 5.x -> dr (another bridge) -> back to 4.x or 5.x: skipped.
        assert_eq!(
            travel(&[("4.x", "5.x"), ("5.x", "dr")]),
            Ok(format!("4.x,5.x#{ID}"))
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
        assert!(!looped(None, ID, &r));
        assert!(!looped(Some(""), ID, &r));
        assert!(
            !looped(Some("5.x-staging"), ID, &r),
            "names match whole, not as prefixes"
        );
        assert!(looped(Some(" 5.x , 4.x"), ID, &r));
        assert_eq!(stamped(Some("4.x"), ID, &r), format!("4.x#{ID}"));
        assert_eq!(stamped(Some("dr, "), ID, &r), format!("dr,4.x#{ID}"));
    }

    /// Issue 30 item 5a: two deployments name the clusters differently, so
    /// neither recognises the other's destination name; a stamp that names
    /// the route's own source (the message left this cluster before) is a
    /// loop too: prod4 -> prod4,5.x -> (back on prod4) refused, instead of
    /// a new copy at every hop.
    #[test]
    fn a_message_that_left_the_routes_source_before_is_not_sent_again() {
        // Deployment A: prod4 -> 5.x. Deployment B: 5.x -> legacy4, the same
        // 4.x cluster by another name, then A's forward route reads it
        // there again under a third name pair.
        assert_eq!(
            travel(&[("prod4", "5.x"), ("5.x", "legacy4"), ("prod4", "prod5")]),
            Err(2)
        );
        // Without the source rule the third hop was a new copy.
        let r = route("prod4", "prod5");
        assert!(looped(Some(&format!("prod4,5.x#{ID}")), ID, &r));
    }

    /// Issue 30 item 5b: an application consumes a bridged message and
    /// publishes a new one (a new id) copying its user properties: the copy
    /// is not a loop, and leaves with a stamp of its own.
    #[test]
    fn a_stamp_copied_onto_another_message_is_not_its_own() {
        let forward = route("4.x", "5.x");
        let copied = format!("5.x#{ID}");
        assert!(
            looped(Some(&copied), ID, &forward),
            "the bridged message itself"
        );
        assert!(
            !looped(Some(&copied), "NEW-ID-1", &forward),
            "a copy with a new id"
        );
        assert_eq!(stamped(Some(&copied), "NEW-ID-1", &forward), "4.x#NEW-ID-1");
    }
}
