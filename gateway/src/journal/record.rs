//! One journal record on disk and reading a segment back.
//!
//! A record is `len: u32 LE | crc32: u32 LE | seq: u64 LE | topic_len: u16 LE | topic |
//! payload`, where `len` counts everything after the CRC and the CRC covers the same
//! bytes. A record cut short or failing its CRC ends what a segment holds.

use std::io::Read;

use bytes::Bytes;

/// Bytes before the checked part: length and CRC.
const HEAD: usize = 8;
/// Bytes of the checked part before the topic: sequence number and topic length.
const FIXED: usize = 10;

/// Bytes a record of this topic and payload takes on disk.
pub fn encoded_len(topic: &str, payload: &[u8]) -> usize {
    HEAD + FIXED + topic.len() + payload.len()
}

/// Appends one record to `buf`. The topic must fit in 65535 bytes (MQTT's own limit).
pub fn encode(buf: &mut Vec<u8>, seq: u64, topic: &str, payload: &[u8]) {
    let topic_len = u16::try_from(topic.len()).unwrap_or(u16::MAX);
    let topic = &topic.as_bytes()[..usize::from(topic_len)];
    let body_len = FIXED + topic.len() + payload.len();
    let start = buf.len();
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&topic_len.to_le_bytes());
    buf.extend_from_slice(topic);
    buf.extend_from_slice(payload);
    let crc = crc32fast::hash(&buf[start + HEAD..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The entry's sequence number.
    pub seq: u64,
    /// The topic the message was published to.
    pub topic: String,
    /// The message's payload.
    pub payload: Bytes,
}

/// What reading a segment found: its whole records, and the length of the part they fill
/// (a torn or corrupt tail starts there).
pub struct Segment {
    pub records: Vec<Record>,
    pub valid_len: u64,
    /// Why reading stopped before the end of the file, if it did.
    pub damage: Option<String>,
}

/// Reads every whole record of a segment from its start.
pub fn read_segment(mut file: impl Read, largest: usize) -> std::io::Result<Segment> {
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    let mut records = Vec::new();
    let mut at = 0usize;
    let damage = loop {
        if at == data.len() {
            break None;
        }
        let Some(head) = data.get(at..at + HEAD) else {
            break Some(format!("a record cut short at byte {at}"));
        };
        let body_len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if !(FIXED..=largest + FIXED + usize::from(u16::MAX)).contains(&body_len) {
            break Some(format!(
                "a record of impossible length {body_len} at byte {at}"
            ));
        }
        let Some(body) = data.get(at + HEAD..at + HEAD + body_len) else {
            break Some(format!("a record cut short at byte {at}"));
        };
        if crc32fast::hash(body) != crc {
            break Some(format!("a record failing its checksum at byte {at}"));
        }
        let seq = u64::from_le_bytes(body[0..8].try_into().unwrap_or([0; 8]));
        let topic_len = usize::from(u16::from_le_bytes([body[8], body[9]]));
        let Some(topic) = body.get(FIXED..FIXED + topic_len) else {
            break Some(format!("a record whose topic overruns it at byte {at}"));
        };
        let Ok(topic) = std::str::from_utf8(topic) else {
            break Some(format!("a record whose topic is not UTF-8 at byte {at}"));
        };
        records.push(Record {
            seq,
            topic: topic.to_string(),
            payload: Bytes::copy_from_slice(&body[FIXED + topic_len..]),
        });
        at += HEAD + body_len;
    };
    Ok(Segment {
        records,
        valid_len: at as u64,
        damage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(records: &[(u64, &str, &[u8])]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (seq, topic, payload) in records {
            encode(&mut buf, *seq, topic, payload);
        }
        buf
    }

    #[test]
    fn records_read_back_as_written() {
        let buf = encoded(&[
            (1, "a/b", b"{\"v\":1}"),
            (2, "", b""),
            (7, "t", &[0xff; 300]),
        ]);
        assert_eq!(
            buf.len(),
            encoded_len("a/b", b"{\"v\":1}") + encoded_len("", b"") + encoded_len("t", &[0; 300])
        );
        let seg = read_segment(&buf[..], 1024).unwrap();
        assert!(seg.damage.is_none());
        assert_eq!(seg.valid_len, buf.len() as u64);
        let seqs: Vec<u64> = seg.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 2, 7]);
        assert_eq!(seg.records[0].topic, "a/b");
        assert_eq!(&seg.records[0].payload[..], b"{\"v\":1}");
        assert_eq!(seg.records[2].payload.len(), 300);
    }

    #[test]
    fn a_torn_tail_ends_the_segment_at_the_last_whole_record() {
        let buf = encoded(&[(1, "a", b"one"), (2, "a", b"two")]);
        let first = encoded_len("a", b"one");
        for cut in first..buf.len() {
            let seg = read_segment(&buf[..cut], 1024).unwrap();
            assert_eq!(seg.records.len(), 1, "cut at {cut}");
            assert_eq!(seg.valid_len, first as u64);
            assert_eq!(seg.damage.is_some(), cut > first);
        }
    }

    #[test]
    fn a_flipped_byte_fails_the_checksum() {
        let mut buf = encoded(&[(1, "a", b"one"), (2, "a", b"two")]);
        let last = buf.len() - 1;
        buf[last] ^= 1;
        let seg = read_segment(&buf[..], 1024).unwrap();
        assert_eq!(seg.records.len(), 1);
        assert!(seg.damage.unwrap().contains("checksum"));
    }
}
