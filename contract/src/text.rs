//! What every type written as one string shares: serde through `FromStr`
//! and `Display`, and its CRD schema (a string with a pattern).

/// Serialize with `Display`, deserialize with `FromStr` (its error is the message).
macro_rules! serde_as_text {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// The CRD schema of a string type: inline, `type: string` plus `$fields`.
macro_rules! string_schema {
    ($ty:ty, $name:literal, { $($fields:tt)* }) => {
        #[cfg(feature = "schema")]
        impl schemars::JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }
            fn inline_schema() -> bool {
                true
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", $($fields)* })
            }
        }
    };
}

pub(crate) use {serde_as_text, string_schema};
