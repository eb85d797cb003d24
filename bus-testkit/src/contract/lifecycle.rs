//! Closing: flushes, errors after close, a blocked receive woken by close.

#![allow(unused_imports)]
use super::*;

/// Closing a publisher waits for publishes in flight: every publish that returned an id is
/// delivered, and the others failed with `Closed`.
pub async fn publisher_close_flushes(target: &Target) -> Outcome {
    let limit = target.receive_timeout();
    let (publisher, subscriber) = (publisher(target).await, subscriber(target).await);
    let publisher: Arc<dyn Publisher> = Arc::from(publisher);
    let topic = fresh_topic("close_flushes");
    let subscription = subscribe(&*subscriber, &topic, &fresh_options("flush")).await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (publisher, topic) = (publisher.clone(), topic.clone());
            tokio::spawn(async move {
                publisher
                    .publish(&topic, Message::new(format!("{i}")))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    publisher.close().await.expect("close");
    let mut ids = HashSet::new();
    for task in tasks {
        match task.await.expect("publish task") {
            Ok(id) => {
                ids.insert(id);
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::Closed, "publish during close: {e}"),
        }
    }
    receive_all(
        limit,
        &*subscription,
        &ids,
        "messages confirmed before close",
    )
    .await;
    Outcome::Passed
}

/// After close, publish, subscribe and receive return `Closed`.
pub async fn operations_after_close_fail(target: &Target) -> Outcome {
    let Fixture {
        publisher,
        subscriber,
        topic,
    } = Fixture::new(target, "after_close").await;
    let options = fresh_options("closed");
    let subscription = subscribe(&*subscriber, &topic, &options).await;

    publisher.close().await.expect("close publisher");
    publisher.close().await.expect("close is idempotent");
    let err = publisher
        .publish(&topic, Message::new("late"))
        .await
        .expect_err("publish after close");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");

    subscription.close().await.expect("close subscription");
    subscription.close().await.expect("close is idempotent");
    let err = subscription
        .receive()
        .await
        .expect_err("receive after close");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");

    subscriber.close().await.expect("close subscriber");
    let err = subscriber
        .subscribe(&topic, options)
        .await
        .expect_err("subscribe after close must fail");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    Outcome::Passed
}

/// Closing a subscription whose consumer is blocked in `receive` returns promptly, and so does
/// the blocked `receive` (with `Closed`).
pub async fn close_unblocks_receive(target: &Target) -> Outcome {
    let subscriber = subscriber(target).await;
    let topic = fresh_topic("close_blocked");
    let subscription: Arc<dyn Subscription> =
        Arc::from(subscribe(&*subscriber, &topic, &fresh_options("blocked")).await);
    let blocked = tokio::spawn({
        let subscription = subscription.clone();
        async move { subscription.receive().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !blocked.is_finished(),
        "receive returned with nothing published"
    );
    timeout(Duration::from_secs(5), subscription.close())
        .await
        .expect("close returns promptly")
        .expect("close");
    let result = timeout(Duration::from_secs(5), blocked)
        .await
        .expect("the blocked receive returns promptly after close")
        .expect("receive task");
    let err = result.expect_err("receive on a closed subscription");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    Outcome::Passed
}
