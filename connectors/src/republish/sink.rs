//! Publishing results into the embedded broker through a function the gateway gives,
//! so this crate does not depend on the broker's implementation.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use super::RepublishSinkConfig;
use crate::codec::MessageIds;
use crate::sink::{Message, Sink, SinkError, SinkEvent};
use crate::topic_template::TopicTemplate;

/// Hands messages (topic, payload) to the embedded broker; resolves once the broker has
/// them for good (journaled for the streams that read them, forwarded to subscribers).
/// An error means the broker cannot take them.
pub type Publish = Box<
    dyn FnMut(Vec<(String, Bytes)>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
        + Send,
>;

/// Publishes each result, with its message id, to the embedded broker (QoS 0 to its
/// subscribers). A result counts as delivered once the broker took it: subscribers that
/// are not connected at that moment do not get it; streams reading the topic do.
pub struct RepublishSink {
    topic: TopicTemplate,
    ids: MessageIds,
    publish: Publish,
    events: VecDeque<SinkEvent>,
}

impl RepublishSink {
    /// A sink handing results to `publish`, on `cfg`'s topic with `{gateway}` set to
    /// `gateway`, each stamped with its id from `ids`.
    pub fn new(
        cfg: &RepublishSinkConfig,
        gateway: &str,
        ids: MessageIds,
        publish: Publish,
    ) -> Self {
        RepublishSink {
            topic: TopicTemplate::new(&cfg.topic, gateway),
            ids,
            publish,
            events: VecDeque::from([SinkEvent::Ready]),
        }
    }
}

impl Sink for RepublishSink {
    fn max_in_flight(&self) -> usize {
        4096
    }

    async fn send(&mut self, msgs: &[Message]) -> Result<(), SinkError> {
        let batch = msgs
            .iter()
            .map(|m| {
                let topic = self.topic.render(&m.rule, &m.payload);
                (topic, self.ids.stamp(&m.payload, m.seq))
            })
            .collect();
        (self.publish)(batch).await.map_err(SinkError::Broker)?;
        self.events
            .push_back(SinkEvent::Confirmed(msgs.iter().map(|m| m.seq).collect()));
        Ok(())
    }

    async fn next_event(&mut self) -> SinkEvent {
        // Nothing to retry: confirmations are all this sink reports after `Ready`.
        crate::sink::queued_event(&mut self.events, &mut None).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn results_go_to_their_topics_with_ids_and_are_confirmed() {
        let got: Arc<Mutex<Vec<(String, Bytes)>>> = Arc::default();
        let sink_got = got.clone();
        let cfg = RepublishSinkConfig {
            topic: "local/{gateway}/{rule}/{device}".into(),
        };
        let mut sink = RepublishSink::new(
            &cfg,
            "gw",
            MessageIds::new("gw", "loc", 1),
            Box::new(move |batch| {
                sink_got.lock().unwrap().extend(batch);
                Box::pin(async { Ok(()) })
            }),
        );
        assert_eq!(sink.next_event().await, SinkEvent::Ready);
        let msg = |seq, body: &str| Message {
            seq,
            rule: Arc::from("hot"),
            payload: Bytes::from(body.to_string()),
            commit_end: true,
        };
        sink.send(&[msg(7, r#"{"device":"m1","t":1}"#), msg(8, r#"{"t":2}"#)])
            .await
            .unwrap();
        assert_eq!(sink.next_event().await, SinkEvent::Confirmed(vec![7, 8]));
        let got = got.lock().unwrap();
        assert_eq!(got[0].0, "local/gw/hot/m1");
        assert_eq!(got[1].0, "local/gw/hot/unknown");
        let first: serde_json::Value = serde_json::from_slice(&got[0].1).unwrap();
        assert_eq!(first["_msg_id"], "gw/loc/0000000000000001-7");
        assert_eq!(first["device"], "m1");
    }

    #[tokio::test]
    async fn a_gone_broker_fails_the_send() {
        let cfg = RepublishSinkConfig { topic: "x".into() };
        let mut sink = RepublishSink::new(
            &cfg,
            "gw",
            MessageIds::new("gw", "loc", 1),
            Box::new(|_| Box::pin(async { Err("journal closed".into()) })),
        );
        let m = Message {
            seq: 1,
            rule: Arc::from("r"),
            payload: Bytes::from_static(b"{}"),
            commit_end: true,
        };
        let e = sink.send(&[m]).await.unwrap_err();
        assert!(e.to_string().contains("journal closed"), "{e}");
    }
}
