//! Reading a write's JSON body into typed fields, with messages that name the field at fault.

use serde_json::{Map, Value};

/// Why a write's body was refused; every variant is the client's fault (400).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The body is not JSON at all.
    #[error("malformed JSON: {0}")]
    Malformed(serde_json::Error),
    /// The body is JSON but not an object.
    #[error("expected a JSON object, found {0}")]
    NotAnObject(&'static str),
    /// A field is missing, mistyped or empty.
    #[error("field \"{field}\": {problem}")]
    Field {
        /// The field's name as the client spells it.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// The fields of a write's JSON object body.
#[derive(Debug)]
pub struct Fields(Map<String, Value>);

impl Fields {
    /// Parses a body that must be one JSON object.
    pub fn parse(body: &[u8]) -> Result<Fields, InputError> {
        match serde_json::from_slice(body).map_err(InputError::Malformed)? {
            Value::Object(map) => Ok(Fields(map)),
            other => Err(InputError::NotAnObject(kind(&other))),
        }
    }

    /// A required string that is not blank.
    pub fn text(&self, field: &'static str) -> Result<String, InputError> {
        match self.0.get(field) {
            None => Err(missing(field, "a non-empty string")),
            Some(value) => {
                let text = string(field, value)?;
                if text.trim().is_empty() {
                    Err(InputError::Field {
                        field,
                        problem: "must not be empty".to_owned(),
                    })
                } else {
                    Ok(text)
                }
            }
        }
    }

    /// An optional string (absent reads as empty, so clients may skip profile details).
    pub fn optional_text(&self, field: &'static str) -> Result<String, InputError> {
        self.0
            .get(field)
            .map_or(Ok(String::new()), |value| string(field, value))
    }

    /// A required integer that fits in 64 bits (`1.0` and `"1"` are refused: ids are integers).
    pub fn integer(&self, field: &'static str) -> Result<i64, InputError> {
        let value = self
            .0
            .get(field)
            .ok_or_else(|| missing(field, "an integer"))?;
        value.as_i64().ok_or_else(|| InputError::Field {
            field,
            problem: format!("expected an integer, found {}", kind(value)),
        })
    }
}

fn string(field: &'static str, value: &Value) -> Result<String, InputError> {
    match value {
        Value::String(text) => Ok(text.clone()),
        other => Err(InputError::Field {
            field,
            problem: format!("expected a string, found {}", kind(other)),
        }),
    }
}

fn missing(field: &'static str, expected: &str) -> InputError {
    InputError::Field {
        field,
        problem: format!("missing, expected {expected}"),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() => "an integer",
        Value::Number(n) if n.is_u64() => "an integer out of range",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_name_the_problem() {
        let fields = Fields::parse(
            br#"{"s":"x","blank":"  ","n":7,"big":18446744073709551615,"f":1.5,"q":"1","z":null}"#,
        )
        .expect("an object");
        assert_eq!(fields.text("s").expect("text"), "x");
        assert_eq!(fields.integer("n").expect("integer"), 7);
        assert_eq!(fields.optional_text("absent").expect("optional"), "");
        let message = |r: Result<_, InputError>| r.map(|_: String| ()).unwrap_err().to_string();
        assert_eq!(
            message(fields.text("blank")),
            r#"field "blank": must not be empty"#
        );
        assert_eq!(
            message(fields.text("absent")),
            r#"field "absent": missing, expected a non-empty string"#
        );
        assert_eq!(
            message(fields.text("n")),
            r#"field "n": expected a string, found an integer"#
        );
        let int_err = |name| fields.integer(name).unwrap_err().to_string();
        assert_eq!(
            int_err("q"),
            r#"field "q": expected an integer, found a string"#
        );
        assert_eq!(
            int_err("f"),
            r#"field "f": expected an integer, found a number"#
        );
        assert_eq!(
            int_err("big"),
            r#"field "big": expected an integer, found an integer out of range"#
        );
        assert_eq!(
            int_err("z"),
            r#"field "z": expected an integer, found null"#
        );
        assert!(matches!(
            Fields::parse(b"[1]"),
            Err(InputError::NotAnObject("an array"))
        ));
        assert!(matches!(Fields::parse(b"{"), Err(InputError::Malformed(_))));
    }
}
