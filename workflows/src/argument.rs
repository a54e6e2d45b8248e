//! The workflow argument, read from the raw payloads a starter sent.
//!
//! The run method takes the payloads as they are ([`RawValue`]) instead of a typed value because a
//! failure to decode the input inside the SDK is a *workflow task* failure: the workflow stays
//! Running and the task is retried forever. No argument, two arguments, a payload in another
//! encoding or JSON nested past serde's recursion limit would all stick that way. Read here, each
//! becomes a [`ValidationError`] and so a non-retryable workflow failure that says what was wrong.

use retake_domain::ValidationError;
use retake_domain::contract::MAX_REQUEST_BYTES;
use serde_json::Value;
use temporalio_common::data_converters::RawValue;

const ENCODING: &str = "encoding";
const JSON: &[u8] = b"json/plain";
const NULL: &[u8] = b"binary/null";

/// The single JSON argument, or why it cannot be read.
pub(crate) fn json_argument(input: &RawValue) -> Result<Value, ValidationError> {
    let [payload] = input.payloads.as_slice() else {
        return Err(ValidationError::single(
            "",
            format!(
                "the workflow takes exactly one argument (the retry request as JSON), got {}",
                input.payloads.len()
            ),
        ));
    };
    if payload.data.len() > MAX_REQUEST_BYTES {
        return Err(ValidationError::single(
            "",
            format!(
                "the argument is {} bytes; a retry request is at most {MAX_REQUEST_BYTES} bytes \
                 (its parameters are copied into every attempt of the result, which Temporal \
                 limits to 2 MiB)",
                payload.data.len()
            ),
        ));
    }
    match payload.metadata.get(ENCODING).map(Vec::as_slice) {
        Some(JSON) => serde_json::from_slice(&payload.data).map_err(|e| {
            ValidationError::single("", format!("the argument is not valid JSON: {e}"))
        }),
        Some(NULL) => Ok(Value::Null),
        other => Err(ValidationError::single(
            "",
            format!(
                "the argument must be JSON (payload encoding json/plain), got encoding {}",
                other.map_or_else(
                    || "none".to_owned(),
                    |e| format!("{:?}", String::from_utf8_lossy(e))
                )
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use temporalio_common::protos::temporal::api::common::v1::Payload;

    fn payload(encoding: &str, data: &[u8]) -> Payload {
        Payload {
            metadata: HashMap::from([(ENCODING.to_owned(), encoding.as_bytes().to_vec())]),
            data: data.to_vec(),
            ..Default::default()
        }
    }

    fn read(payloads: Vec<Payload>) -> Result<Value, String> {
        json_argument(&RawValue::new(payloads)).map_err(|e| e.to_string())
    }

    #[test]
    fn one_json_payload_is_the_argument() {
        assert_eq!(
            read(vec![payload("json/plain", br#"{"a":1}"#)]).unwrap(),
            serde_json::json!({"a": 1})
        );
    }

    #[test]
    fn an_argument_over_the_request_limit_is_rejected_with_its_size() {
        let big = format!(r#"{{"params": {{"prompt": "{}"}}}}"#, "x".repeat(400_000));
        let err = read(vec![payload("json/plain", big.as_bytes())]).unwrap_err();
        assert!(
            err.contains("is 400") && err.contains("at most 65536 bytes"),
            "{err}"
        );
    }

    #[test]
    fn no_argument_and_two_arguments_are_rejected_with_the_count() {
        assert!(read(vec![]).unwrap_err().contains("got 0"));
        let two = vec![payload("json/plain", b"1"), payload("json/plain", b"2")];
        assert!(read(two).unwrap_err().contains("got 2"));
    }

    #[test]
    fn a_binary_payload_is_rejected_naming_its_encoding() {
        let err = read(vec![payload("binary/plain", b"\x00\x01")]).unwrap_err();
        assert!(err.contains("binary/plain"), "{err}");
    }

    #[test]
    fn json_nested_past_the_recursion_limit_is_rejected_not_a_panic() {
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        let err = read(vec![payload("json/plain", deep.as_bytes())]).unwrap_err();
        assert!(err.contains("recursion limit"), "{err}");
    }

    #[test]
    fn a_null_argument_is_read_as_null() {
        assert_eq!(
            read(vec![payload("binary/null", b"")]).unwrap(),
            Value::Null
        );
    }
}
