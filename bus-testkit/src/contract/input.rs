//! Bad input: names, sizes, attributes, payloads that do not decode.

#![allow(unused_imports)]
use super::*;

/// An invalid topic name, an oversize payload and too many attributes are rejected with the
/// right error kind, and the backend still works afterwards.
pub async fn bad_input_rejected(target: &Target) -> Outcome {
    let limit = target.receive_timeout();
    let caps = target.capabilities();
    let (publisher, subscriber) = (publisher(target).await, subscriber(target).await);
    for bad in [
        "",
        "1starts-with-digit",
        "has space",
        "wild/+/card",
        "a/#",
        "$SYS/x",
    ] {
        let err = Topic::new(bad).expect_err("invalid topic");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad:?}: {err}");
    }
    let topic = fresh_topic("bad_input");
    let subscription = subscribe(&*subscriber, &topic, &fresh_options("bad")).await;

    let oversize = Message::new(vec![b'x'; caps.max_message_bytes + 1]);
    let err = publisher
        .publish(&topic, oversize)
        .await
        .expect_err("oversize payload");
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge, "{err}");
    assert_eq!(err.backend(), target.name(), "errors name their backend");

    let mut crowded = Message::new("crowded");
    for i in 0..=caps.max_attributes {
        crowded.attributes.insert(format!("k{i}"), "v".into());
    }
    let err = publisher
        .publish(&topic, crowded)
        .await
        .expect_err("too many attributes");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");

    let id = publish(&*publisher, &topic, Message::new("still works")).await;
    let delivery = receive(limit, &*subscription, "a message after rejected input").await;
    assert_eq!(delivery.id(), id);
    assert_eq!(delivery.payload().as_ref(), b"still works");
    delivery.ack().await.expect("ack");
    Outcome::Passed
}

/// A typed subscriber given a payload that is not valid JSON yields a `Decode` error that
/// carries the delivery; the next valid message still arrives.
pub async fn typed_decode_error_keeps_delivery(target: &Target) -> Outcome {
    let limit = target.receive_timeout();
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct CrashDetail {
        executable_name: String,
        is_input_from_file: bool,
    }
    let Fixture {
        publisher,
        subscriber,
        topic,
    } = Fixture::new(target, "typed").await;
    let typed = JsonSubscription::<CrashDetail>::new(
        subscribe(&*subscriber, &topic, &fresh_options("typed")).await,
    );
    let bad_id = publish(&*publisher, &topic, Message::new("{not json")).await;
    let good = CrashDetail {
        executable_name: "boflow1".into(),
        is_input_from_file: false,
    };
    publisher
        .publish_json(&topic, &good)
        .await
        .expect("publish json");

    // Backends without ordering may deliver the two in either order.
    let (mut decode_errors, mut decoded) = (0, 0);
    for _ in 0..2 {
        match timeout(limit, typed.receive())
            .await
            .expect("a typed delivery")
        {
            Ok(next) => {
                assert_eq!(next.value, good);
                next.ack().await.expect("ack");
                decoded += 1;
            }
            Err(mut err) => {
                assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
                let bad = err
                    .take_delivery()
                    .expect("decode error carries the delivery");
                assert_eq!(bad.id(), bad_id);
                assert_eq!(bad.payload().as_ref(), b"{not json");
                bad.ack().await.expect("ack the undecodable message");
                decode_errors += 1;
            }
        }
    }
    assert_eq!((decode_errors, decoded), (1, 1));
    Outcome::Passed
}
