//! Cutting queued results into NATS messages, each with an id that a resend repeats.
//!
//! JetStream drops a message whose `Nats-Msg-Id` it stored within the stream's
//! duplicate window, so a resend must carry the same id and the same results as the
//! first send. One result per message: the id is the result's own `_msg_id`. Several
//! per message: the cut is made left to right from a message boundary, and ends at the
//! latest at a queue commit's end ([`Message::commit_end`]), a change of subject,
//! `batch_max` results or `max_payload` bytes; all of these depend on the queued
//! results alone, and resends start where an unconfirmed message started, so every
//! resend is cut as before. A run of results that reaches the end of what was read
//! before its commit ended is held back until the rest of the commit is read.

use bytes::Bytes;

use crate::codec::{MessageIds, json_array};
use crate::sink::Message;
use crate::topic_template::TopicTemplate;

/// One NATS message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Its subject.
    pub subject: String,
    /// Its `Nats-Msg-Id`.
    pub id: String,
    /// A JSON object (one result) or a JSON array of results, each with its `_msg_id`.
    pub payload: Bytes,
    /// The queue sequences of its results.
    pub seqs: Vec<u64>,
}

/// How results are cut into messages.
pub struct Cutter<'a> {
    /// The subject template.
    pub subject: &'a TopicTemplate,
    /// Message ids.
    pub ids: &'a MessageIds,
    /// Results per message, at most.
    pub per_message: usize,
    /// Payload bytes per message, at most (a single larger result goes alone).
    pub max_payload: usize,
}

impl Cutter<'_> {
    /// Cuts `msgs` into messages; returns them and how many results at the end are held
    /// back (a run whose commit goes on past `msgs`).
    pub fn cut(&self, msgs: &[Message]) -> (Vec<Outgoing>, usize) {
        let mut out = Vec::new();
        let mut i = 0;
        while i < msgs.len() {
            let first = &msgs[i];
            let subject = self.subject.render(&first.rule, &first.payload);
            if self.per_message == 1 {
                out.push(Outgoing {
                    subject,
                    id: self.ids.id(first.seq),
                    payload: self.ids.stamp(&first.payload, first.seq),
                    seqs: vec![first.seq],
                });
                i += 1;
                continue;
            }
            let mut rows = vec![self.ids.stamp(&first.payload, first.seq)];
            // `[`, `]` and the rows with a comma between each two.
            let mut size = rows[0].len() + 2;
            let mut end = i + 1;
            // Whether the message ends here for a reason of the results themselves, not
            // because `msgs` does.
            let complete = loop {
                if msgs[end - 1].commit_end || rows.len() == self.per_message {
                    break true;
                }
                let Some(next) = msgs.get(end) else {
                    break false;
                };
                if self.subject.render(&next.rule, &next.payload) != subject {
                    break true;
                }
                let row = self.ids.stamp(&next.payload, next.seq);
                if size + 1 + row.len() > self.max_payload {
                    break true;
                }
                size += 1 + row.len();
                rows.push(row);
                end += 1;
            };
            if !complete {
                return (out, msgs.len() - i);
            }
            let last_seq = msgs[end - 1].seq;
            let id = match end - i {
                1 => self.ids.id(first.seq),
                _ => format!("{}..{last_seq}", self.ids.id(first.seq)),
            };
            out.push(Outgoing {
                subject,
                id,
                payload: Bytes::from(json_array(&rows)),
                seqs: msgs[i..end].iter().map(|m| m.seq).collect(),
            });
            i = end;
        }
        (out, 0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Results `seqs`, for rule `r` unless the payload names another, with commit ends
    /// after the sequences in `ends`.
    fn queued(
        seqs: std::ops::Range<u64>,
        ends: &[u64],
        rule: impl Fn(u64) -> &'static str,
    ) -> Vec<Message> {
        seqs.map(|seq| Message {
            seq,
            rule: Arc::from(rule(seq)),
            payload: Bytes::from(format!("{{\"n\":{seq}}}")),
            commit_end: ends.contains(&seq),
        })
        .collect()
    }

    fn cutter<'a>(t: &'a TopicTemplate, ids: &'a MessageIds, per: usize, max: usize) -> Cutter<'a> {
        Cutter {
            subject: t,
            ids,
            per_message: per,
            max_payload: max,
        }
    }

    #[test]
    fn one_result_per_message_uses_its_own_id() {
        let t = TopicTemplate::nats("fg.{gateway}.{rule}", "gw");
        let ids = MessageIds::new("gw", "js", 1);
        let (out, held) = cutter(&t, &ids, 1, 1 << 20).cut(&queued(5..7, &[], |_| "r"));
        assert_eq!(held, 0);
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].subject.as_str(), out[0].id.as_str()),
            ("fg.gw.r", "gw/js/0000000000000001-5")
        );
        assert!(
            out[1]
                .payload
                .starts_with(b"{\"_msg_id\":\"gw/js/0000000000000001-6\"")
        );
    }

    #[test]
    fn batches_end_at_commit_ends_subjects_and_limits() {
        let t = TopicTemplate::nats("fg.{rule}", "gw");
        let ids = MessageIds::new("gw", "js", 1);
        let rule = |s| if (10..12).contains(&s) { "b" } else { "a" };
        // Commits end after 3 and 15; rule b for 10 and 11; 4 results per message.
        let msgs = queued(0..16, &[3, 15], rule);
        let (out, held) = cutter(&t, &ids, 4, 1 << 20).cut(&msgs);
        let seqs: Vec<Vec<u64>> = out.iter().map(|o| o.seqs.clone()).collect();
        assert_eq!(
            seqs,
            [
                vec![0, 1, 2, 3],
                vec![4, 5, 6, 7],
                vec![8, 9],
                vec![10, 11],
                vec![12, 13, 14, 15]
            ]
        );
        assert_eq!(held, 0);
        assert_eq!(out[2].id, "gw/js/0000000000000001-8..9");
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out[2].payload).unwrap();
        assert_eq!(rows[1]["_msg_id"], "gw/js/0000000000000001-9");
        assert_eq!(rows[1]["n"], 9);
        // A payload limit of two results' size.
        let two = out[0].payload.len() / 2 + 1;
        let (out, _) = cutter(&t, &ids, 4, two).cut(&msgs[..4]);
        assert_eq!(out.iter().map(|o| o.seqs.len()).collect::<Vec<_>>(), [2, 2]);
    }

    #[test]
    fn a_resend_from_any_message_boundary_is_cut_as_before() {
        let t = TopicTemplate::nats("fg.{rule}", "gw");
        let ids = MessageIds::new("gw", "js", 1);
        let msgs = queued(
            0..40,
            &[6, 7, 25, 39],
            |s| if s % 9 == 0 { "x" } else { "y" },
        );
        let c = cutter(&t, &ids, 5, 1 << 20);
        let (whole, held) = c.cut(&msgs);
        assert_eq!(held, 0);
        // Read in pieces of every size, as the uplink reads with little room: the held
        // results come first in the next piece.
        for piece in 1..12 {
            let mut got = Vec::new();
            let mut carried: Vec<Message> = Vec::new();
            for chunk in msgs.chunks(piece) {
                carried.extend_from_slice(chunk);
                let (out, held) = c.cut(&carried);
                got.extend(out);
                carried.drain(..carried.len() - held);
            }
            assert!(carried.is_empty());
            assert_eq!(got, whole, "pieces of {piece}");
        }
        // A resend starting at any boundary repeats the messages from there.
        for (start, m) in whole.iter().enumerate() {
            let from = msgs.iter().position(|x| x.seq == m.seqs[0]).unwrap();
            let (again, _) = c.cut(&msgs[from..]);
            assert_eq!(again, whole[start..], "resend from {}", m.seqs[0]);
        }
    }

    #[test]
    fn an_unfinished_commit_is_held_back() {
        let t = TopicTemplate::nats("fg.{rule}", "gw");
        let ids = MessageIds::new("gw", "js", 1);
        let msgs = queued(0..7, &[2], |_| "r");
        let (out, held) = cutter(&t, &ids, 10, 1 << 20).cut(&msgs);
        assert_eq!(out.len(), 1);
        assert_eq!(held, 4);
    }
}
