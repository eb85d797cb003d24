//! What decodes untrusted input never panics, whatever the input: names, CloudEvents in both
//! modes, typed payloads; and text from the wire always comes out printable and bounded.

use bus_core::cloudevents::{decode_event, event_data, event_message, EventFormat};
use bus_core::{printable, Message, SubscriptionName, Topic};
use proptest::prelude::*;

fn attributes() -> impl Strategy<Value = std::collections::BTreeMap<String, String>> {
    let key = prop_oneof![
        Just("specversion".to_string()),
        Just("ce-specversion".to_string()),
        Just("ce_specversion".to_string()),
        Just("content-type".to_string()),
        Just("ce-id".to_string()),
        Just("id".to_string()),
        Just("ce-type".to_string()),
        Just("time".to_string()),
        Just("ce-time".to_string()),
        ".{0,12}",
    ];
    let value = prop_oneof![
        Just("1.0".to_string()),
        Just("application/json".to_string()),
        ".{0,40}"
    ];
    proptest::collection::btree_map(key, value, 0..8)
}

proptest! {
    #[test]
    fn names_never_panic_and_accepted_names_keep_their_text(text in ".{0,300}") {
        if let Ok(topic) = Topic::new(&text) {
            prop_assert_eq!(topic.as_str(), text.as_str());
            prop_assert!(!topic.as_str().contains('+') && !topic.as_str().contains('#'));
        }
        if let Ok(name) = SubscriptionName::new(&text) {
            prop_assert_eq!(name.as_str(), text.as_str());
        }
    }

    #[test]
    fn cloudevents_decoding_never_panics(
        payload in proptest::collection::vec(any::<u8>(), 0..400),
        attributes in attributes(),
    ) {
        let message = Message { payload: payload.into(), attributes, ordering_key: None };
        if let Ok(event) = decode_event(&message) {
            let _ = event_data::<serde_json::Value>(&event);
            // What decodes encodes again, in both modes.
            prop_assert!(event_message(&event, &EventFormat::structured()).is_ok());
            prop_assert!(event_message(&event, &EventFormat::binary("ce-")).is_ok());
        }
    }

    #[test]
    fn structured_json_of_any_shape_never_panics(json in "\\{(\"[a-z]{1,12}\": ?(\"[^\"]{0,20}\"|[0-9]{1,5}|null|true),? ?){0,8}\\}") {
        let _ = decode_event(&Message::new(json));
    }

    #[test]
    fn printable_text_has_no_control_characters_and_is_bounded(text in "\\PC{0,50}[\\x00-\\x1f\\x7f]{0,5}.{0,400}") {
        let shown = printable(&text);
        prop_assert!(!shown.chars().any(char::is_control), "{:?}", shown);
        prop_assert!(shown.chars().count() <= 201 * 6);
    }
}
