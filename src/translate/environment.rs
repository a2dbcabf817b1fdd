//! Reading the environment tag (canary / gray-release label) of a 4.x record.
//!
//! Gray-release tooling writes the tag as a user property whose name the
//! operator configures. Tools disagree on the value's shape: a plain name
//! (`gray`), a JSON object (`{"name":"gray"}`) or a JSON array of such objects
//! (`[{"name":"gray"}]`). This module reduces all of them to the name.

use serde_json::Value;

use crate::remoting::MessageRecord;

/// The environment name carried by `record` in the user property
/// `property_name`, or `None` when the property is absent or names nothing.
///
/// Accepted value shapes (surrounding whitespace ignored):
/// - plain: `gray`;
/// - JSON object: `{"name":"gray"}` (other fields ignored);
/// - JSON array: `[{"name":"gray"}]` or `["gray"]`; the first entry with a
///   non-empty name wins.
///
/// A value that starts like JSON but does not parse is taken as a plain name,
/// so a tag is never lost to a parser's opinion; JSON that parses but carries
/// no name (`{}`, `[]`, `{"name":""}`) yields `None`.
pub fn environment_of(record: &MessageRecord, property_name: &str) -> Option<String> {
    environment_name(record.properties.get(property_name)?)
}

/// [`environment_of`] on a bare property value.
pub fn environment_name(value: &str) -> Option<String> {
    let value = value.trim();
    if value.starts_with('{') || value.starts_with('[') {
        if let Ok(json) = serde_json::from_str::<Value>(value) {
            return name_in_json(&json);
        }
    }
    non_empty(value)
}

fn name_in_json(json: &Value) -> Option<String> {
    match json {
        Value::String(name) => non_empty(name),
        Value::Object(fields) => match fields.get("name") {
            Some(Value::String(name)) => non_empty(name),
            _ => None,
        },
        Value::Array(entries) => entries.iter().find_map(name_in_json),
        _ => None,
    }
}

fn non_empty(name: &str) -> Option<String> {
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::environment_name;

    #[test]
    fn value_shapes() {
        let table: &[(&str, Option<&str>)] = &[
            ("gray", Some("gray")),
            ("  gray  ", Some("gray")),
            ("", None),
            ("   ", None),
            (r#"{"name":"gray"}"#, Some("gray")),
            (r#"{"name":"gray","weight":10}"#, Some("gray")),
            (r#"{ "name" : " canary " }"#, Some("canary")),
            (r#"[{"name":"gray"}]"#, Some("gray")),
            (r#"[{"name":""},{"name":"blue"}]"#, Some("blue")),
            (r#"["gray"]"#, Some("gray")),
            (r#"{}"#, None),
            (r#"[]"#, None),
            (r#"{"name":""}"#, None),
            (r#"{"name":7}"#, None),
            // looks like JSON but is not: keep it as a plain name
            ("[gray", Some("[gray")),
            ("{gray}", Some("{gray}")),
        ];
        for (value, expected) in table {
            assert_eq!(
                environment_name(value).as_deref(),
                *expected,
                "value {value:?}"
            );
        }
    }
}
