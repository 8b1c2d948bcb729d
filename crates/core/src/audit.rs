//! The tamper-evident audit trail, as pure functions: the canonical encoding of an event, the
//! hash chain over events, signed checkpoints of the chain, and the verifier that finds the
//! first event that does not fit. No I/O: the store keeps the chain, the server writes the
//! checkpoints, the CLI reads both.
//!
//! Hashing follows RFC 6962's domain separation: a leaf is `SHA-256(0x00 ‖ encoding)`, and the
//! chain's hash after event `i` is `SHA-256(0x01 ‖ chain(i-1) ‖ leaf(i))`, starting from a
//! fixed genesis value. Events are numbered from 1; a chain of `n` events ends at index `n`
//! (index 0 is the empty chain). The encoding includes the index, so an event cannot be moved
//! without changing its leaf. A checkpoint is an Ed25519 signature over a domain-separated
//! message naming an index, the chain's hash there, and the time it was signed.

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::AuditEvent;

pub type Hash = [u8; 32];

/// The version byte that starts every event's encoding.
const ENCODING_VERSION: u8 = 1;
const LEAF_PREFIX: u8 = 0x00;
const NODE_PREFIX: u8 = 0x01;
const GENESIS_SEED: &[u8] = b"airlock audit chain v1";
const CHECKPOINT_DOMAIN: &[u8] = b"airlock audit checkpoint v1\0";

/// The chain's hash before its first event.
pub fn genesis() -> Hash {
    Sha256::digest(GENESIS_SEED).into()
}

/// The canonical bytes of the event at `index`: a version byte, the index (u64) and the time
/// (µs since the epoch, i64), both big-endian, then each text field as a u32 big-endian
/// length and its UTF-8 bytes, an optional one preceded by 0 (absent) or 1 (present). No two
/// events encode alike.
pub fn encode(index: u64, event: &AuditEvent) -> Vec<u8> {
    fn text(bytes: &mut Vec<u8>, value: &str) {
        bytes.extend_from_slice(&(value.len() as u32).to_be_bytes());
        bytes.extend_from_slice(value.as_bytes());
    }
    fn optional(bytes: &mut Vec<u8>, value: Option<&str>) {
        match value {
            None => bytes.push(0),
            Some(value) => {
                bytes.push(1);
                text(bytes, value);
            }
        }
    }
    let mut bytes = Vec::with_capacity(128);
    bytes.push(ENCODING_VERSION);
    bytes.extend_from_slice(&index.to_be_bytes());
    bytes.extend_from_slice(&event.time.timestamp_micros().to_be_bytes());
    text(&mut bytes, &event.request_id);
    text(&mut bytes, &event.actor);
    text(&mut bytes, &event.action);
    optional(&mut bytes, event.target.as_deref());
    text(&mut bytes, &event.outcome);
    optional(&mut bytes, event.source.as_deref());
    optional(&mut bytes, event.detail.as_deref());
    bytes
}

/// `SHA-256(0x00 ‖ encode(index, event))`.
pub fn leaf_hash(index: u64, event: &AuditEvent) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([LEAF_PREFIX]);
    hasher.update(encode(index, event));
    hasher.finalize().into()
}

/// `SHA-256(0x01 ‖ previous ‖ leaf)`.
pub fn chain_hash(previous: &Hash, leaf: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([NODE_PREFIX]);
    hasher.update(previous);
    hasher.update(leaf);
    hasher.finalize().into()
}

/// Where the chain ends: the last event's index (0 when empty) and the hash there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    pub index: u64,
    pub hash: Hash,
}

impl ChainHead {
    pub fn genesis() -> Self {
        Self {
            index: 0,
            hash: genesis(),
        }
    }

    /// The head once `event` is appended.
    pub fn next(&self, event: &AuditEvent) -> ChainHead {
        let index = self.index + 1;
        ChainHead {
            index,
            hash: chain_hash(&self.hash, &leaf_hash(index, event)),
        }
    }
}

impl Default for ChainHead {
    fn default() -> Self {
        Self::genesis()
    }
}

/// An event in the chain, as stored: its index and the chain's hash up to and including it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainedEvent {
    pub index: u64,
    pub hash: Hash,
    pub event: AuditEvent,
}

/// A signed statement that the chain had `hash` at `index` at `time`.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub index: u64,
    pub hash: Hash,
    pub time: DateTime<Utc>,
    pub signature: [u8; 64],
}

/// A checkpoint as one line of JSON.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointLine {
    index: u64,
    hash: String,
    time: DateTime<Utc>,
    signature: String,
}

impl Checkpoint {
    /// Signs the chain's `head` at `time` (kept to the microsecond).
    pub fn sign(key: &SigningKey, head: ChainHead, time: DateTime<Utc>) -> Self {
        let time = DateTime::from_timestamp_micros(time.timestamp_micros()).unwrap_or(time);
        let signature = key.sign(&Self::message(head.index, &head.hash, time));
        Self {
            index: head.index,
            hash: head.hash,
            time,
            signature: signature.to_bytes(),
        }
    }

    /// Whether `key` signed this checkpoint as it is.
    pub fn is_signed_by(&self, key: &VerifyingKey) -> bool {
        key.verify(
            &Self::message(self.index, &self.hash, self.time),
            &Signature::from_bytes(&self.signature),
        )
        .is_ok()
    }

    fn message(index: u64, hash: &Hash, time: DateTime<Utc>) -> Vec<u8> {
        let mut message = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 48);
        message.extend_from_slice(CHECKPOINT_DOMAIN);
        message.extend_from_slice(&index.to_be_bytes());
        message.extend_from_slice(hash);
        message.extend_from_slice(&time.timestamp_micros().to_be_bytes());
        message
    }

    /// One line of JSON, without the newline.
    pub fn to_line(&self) -> String {
        serde_json::to_string(&CheckpointLine {
            index: self.index,
            hash: to_hex(&self.hash),
            time: self.time,
            signature: to_hex(&self.signature),
        })
        .expect("a checkpoint serializes")
    }

    pub fn parse_line(line: &str) -> Result<Self, String> {
        let line: CheckpointLine = serde_json::from_str(line).map_err(|error| error.to_string())?;
        Ok(Self {
            index: line.index,
            hash: from_hex(&line.hash).ok_or("`hash` is not 32 bytes of hex")?,
            time: line.time,
            signature: from_hex(&line.signature).ok_or("`signature` is not 64 bytes of hex")?,
        })
    }
}

/// Reads a checkpoint file: one checkpoint per line. A last line without its newline is the
/// remains of a write cut short (a crash) and is ignored; any other line that is not a
/// checkpoint is a [`Failure`]. Returns the checkpoints and whether a torn line was ignored.
pub fn parse_checkpoints(text: &str) -> Result<(Vec<Checkpoint>, bool), Failure> {
    let (complete, torn) = match text.rfind('\n') {
        Some(end) => (&text[..end], !text[end + 1..].is_empty()),
        None => ("", !text.is_empty()),
    };
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    for (number, line) in complete.split('\n').enumerate() {
        if line.is_empty() && complete.is_empty() {
            break;
        }
        let checkpoint = Checkpoint::parse_line(line).map_err(|error| Failure {
            index: checkpoints.last().map_or(1, |last| last.index + 1),
            reason: format!(
                "line {} of the checkpoints is not a checkpoint: {error}",
                number + 1
            ),
        })?;
        checkpoints.push(checkpoint);
    }
    Ok((checkpoints, torn))
}

/// The first thing wrong with a chain: the first index that cannot be trusted, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub index: u64,
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "first bad index {}: {}", self.index, self.reason)
    }
}

/// What a verification that found nothing wrong covered.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub head: ChainHead,
    pub checkpoints: usize,
    /// The last checkpoint, which vouches for every event up to its index.
    pub last_checkpoint: Option<Checkpoint>,
}

impl Verified {
    /// Events after the last checkpoint: consistent, but no signature yet proves they were
    /// not cut off or replaced together with their hashes.
    pub fn uncovered(&self) -> u64 {
        self.head.index - self.last_checkpoint.as_ref().map_or(0, |last| last.index)
    }
}

/// Checks stored events, fed in index order, against their hashes and against the signed
/// checkpoints. Deletion and insertion show as an index out of sequence or a hash that does
/// not follow; an edited or reordered event as a hash that does not match; a chain rewritten
/// with fresh hashes as a checkpoint that does not match; a cut-off tail as a checkpoint
/// beyond the last event.
pub struct ChainVerifier {
    checkpoints: Vec<Checkpoint>,
    next_checkpoint: usize,
    head: ChainHead,
    /// The index of the last checkpoint found to match (0: none yet).
    vouched: u64,
}

impl ChainVerifier {
    /// Every checkpoint must be signed by `key`, in order of index and time.
    pub fn new(key: VerifyingKey, checkpoints: Vec<Checkpoint>) -> Result<Self, Failure> {
        let mut previous: Option<&Checkpoint> = None;
        for (number, checkpoint) in checkpoints.iter().enumerate() {
            if !checkpoint.is_signed_by(&key) {
                return Err(Failure {
                    index: checkpoint.index,
                    reason: format!(
                        "checkpoint {} (of index {}) is not signed by the checkpoint key",
                        number + 1,
                        checkpoint.index
                    ),
                });
            }
            if let Some(previous) = previous
                && (checkpoint.index < previous.index || checkpoint.time < previous.time)
            {
                return Err(Failure {
                    index: checkpoint.index,
                    reason: format!(
                        "checkpoint {} (of index {}) comes after one of index {} signed at {}",
                        number + 1,
                        checkpoint.index,
                        previous.index,
                        previous.time.to_rfc3339()
                    ),
                });
            }
            previous = Some(checkpoint);
        }
        let mut verifier = Self {
            checkpoints,
            next_checkpoint: 0,
            head: ChainHead::genesis(),
            vouched: 0,
        };
        // A checkpoint of the empty chain (a server that had written nothing yet).
        verifier.compare_checkpoints()?;
        Ok(verifier)
    }

    /// The next stored event, in index order.
    pub fn push(&mut self, stored: &ChainedEvent) -> Result<(), Failure> {
        let expected = self.head.index + 1;
        if stored.index > expected {
            return Err(Failure {
                index: expected,
                reason: format!(
                    "event {expected} is missing: the next stored event is {} (deleted?)",
                    stored.index
                ),
            });
        }
        if stored.index < expected {
            return Err(Failure {
                index: stored.index,
                reason: format!("event {} is stored twice", stored.index),
            });
        }
        let next = self.head.next(&stored.event);
        if next.hash != stored.hash {
            return Err(Failure {
                index: expected,
                reason: format!(
                    "event {expected} does not match the chain's hash there: it was edited, \
                     moved or inserted, or an event before it was removed"
                ),
            });
        }
        self.head = next;
        self.compare_checkpoints()
    }

    /// Compares the checkpoints at the current head's index with it.
    fn compare_checkpoints(&mut self) -> Result<(), Failure> {
        while let Some(checkpoint) = self.checkpoints.get(self.next_checkpoint)
            && checkpoint.index == self.head.index
        {
            if checkpoint.hash != self.head.hash {
                return Err(Failure {
                    index: self.vouched + 1,
                    reason: format!(
                        "the events after index {} were rewritten: the checkpoint of index {} \
                         signed at {} does not match them",
                        self.vouched,
                        checkpoint.index,
                        checkpoint.time.to_rfc3339()
                    ),
                });
            }
            self.vouched = checkpoint.index;
            self.next_checkpoint += 1;
        }
        Ok(())
    }

    /// After the last stored event: no checkpoint may lie beyond it, and a chain with events
    /// must have at least one checkpoint.
    pub fn finish(self) -> Result<Verified, Failure> {
        if let Some(beyond) = self.checkpoints.get(self.next_checkpoint) {
            return Err(Failure {
                index: self.head.index + 1,
                reason: format!(
                    "the chain ends at index {} but the checkpoint signed at {} covers up to {}: \
                     events were removed from the end",
                    self.head.index,
                    beyond.time.to_rfc3339(),
                    beyond.index
                ),
            });
        }
        if self.checkpoints.is_empty() && self.head.index > 0 {
            return Err(Failure {
                index: 1,
                reason: "there is no signed checkpoint, so nothing proves the chain was not cut \
                         off or rewritten"
                    .into(),
            });
        }
        Ok(Verified {
            head: self.head,
            checkpoints: self.checkpoints.len(),
            last_checkpoint: self.checkpoints.last().cloned(),
        })
    }
}

/// Lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Exactly `N` bytes of hex (either case).
pub fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(bytes)
}

/// A new signing key from 32 random bytes.
pub fn generate_key() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: i64) -> AuditEvent {
        AuditEvent {
            time: DateTime::from_timestamp_micros(1_700_000_000_000_000 + n).unwrap(),
            request_id: format!("req-{n}"),
            actor: "usr_1".into(),
            action: "environment.create".into(),
            target: Some(format!("env_{n}")),
            outcome: "ok".into(),
            source: Some("127.0.0.1".into()),
            detail: None,
        }
    }

    /// `n` events as the store keeps them.
    fn chain(n: u64) -> Vec<ChainedEvent> {
        let mut head = ChainHead::genesis();
        (1..=n)
            .map(|index| {
                let event = event(index as i64);
                head = head.next(&event);
                ChainedEvent {
                    index,
                    hash: head.hash,
                    event,
                }
            })
            .collect()
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn checkpoint_at(events: &[ChainedEvent], index: u64, key: &SigningKey) -> Checkpoint {
        let hash = if index == 0 {
            genesis()
        } else {
            events[index as usize - 1].hash
        };
        Checkpoint::sign(
            key,
            ChainHead { index, hash },
            DateTime::from_timestamp(1_700_000_000 + index as i64, 0).unwrap(),
        )
    }

    fn verify(events: &[ChainedEvent], checkpoints: Vec<Checkpoint>) -> Result<Verified, Failure> {
        let mut verifier = ChainVerifier::new(key(1).verifying_key(), checkpoints)?;
        for stored in events {
            verifier.push(stored)?;
        }
        verifier.finish()
    }

    /// Verifies `events` with checkpoints at 3, 6 and 10 and expects the first bad index.
    fn check(events: &[ChainedEvent], checkpoints: &[Checkpoint], expected: Option<u64>) {
        let result = verify(events, checkpoints.to_vec());
        match expected {
            None => assert!(result.is_ok(), "{result:?}"),
            Some(index) => assert_eq!(result.map_err(|failure| failure.index), Err(index)),
        }
    }

    fn intact() -> (Vec<ChainedEvent>, Vec<Checkpoint>) {
        let events = chain(10);
        let checkpoints = [3, 6, 10]
            .iter()
            .map(|&index| checkpoint_at(&events, index, &key(1)))
            .collect();
        (events, checkpoints)
    }

    #[test]
    fn an_intact_chain_verifies() {
        let (events, checkpoints) = intact();
        let verified = verify(&events, checkpoints).unwrap();
        assert_eq!(verified.head.index, 10);
        assert_eq!(verified.checkpoints, 3);
        assert_eq!(verified.uncovered(), 0);
        // Events after the last checkpoint are fine, only not yet vouched for.
        let (events, checkpoints) = intact();
        let verified = verify(&events, checkpoints[..2].to_vec()).unwrap();
        assert_eq!(verified.uncovered(), 4);
        // An empty chain, with or without a checkpoint of it.
        check(&[], &[], None);
        check(&[], &[checkpoint_at(&[], 0, &key(1))], None);
    }

    #[test]
    fn deleting_an_event_names_its_index() {
        let (mut events, checkpoints) = intact();
        events.remove(4);
        check(&events, &checkpoints, Some(5));
    }

    #[test]
    fn editing_any_field_names_its_index() {
        let edits: [fn(&mut AuditEvent); 8] = [
            |event| event.time += chrono::Duration::microseconds(1),
            |event| event.request_id.push('x'),
            |event| event.actor = "usr_2".into(),
            |event| event.action = "environment.delete".into(),
            |event| event.target = None,
            |event| event.outcome = "forbidden".into(),
            |event| event.source = None,
            |event| event.detail = Some(String::new()),
        ];
        for edit in edits {
            let (mut events, checkpoints) = intact();
            edit(&mut events[6].event);
            check(&events, &checkpoints, Some(7));
        }
    }

    #[test]
    fn swapping_two_events_names_the_first() {
        let (mut events, checkpoints) = intact();
        // Swapped with their hashes, keeping the indexes in place (rows renumbered)...
        let (a, b) = (events[3].clone(), events[7].clone());
        events[3] = ChainedEvent { index: 4, ..b };
        events[7] = ChainedEvent { index: 8, ..a };
        check(&events, &checkpoints, Some(4));
        // ...or only their contents.
        let (mut events, checkpoints) = intact();
        let first = events[3].event.clone();
        events[3].event = events[4].event.clone();
        events[4].event = first;
        check(&events, &checkpoints, Some(4));
    }

    #[test]
    fn inserting_a_forged_event_names_its_index() {
        // A row slipped in with a made-up hash, the rest renumbered.
        let (mut events, checkpoints) = intact();
        events.insert(
            7,
            ChainedEvent {
                index: 8,
                hash: [7; 32],
                event: event(99),
            },
        );
        for later in &mut events[8..] {
            later.index += 1;
        }
        check(&events, &checkpoints, Some(8));
        // With a hash computed from the one before, the next event no longer follows...
        let (mut events, checkpoints) = intact();
        let forged = event(99);
        let hash = chain_hash(&events[6].hash, &leaf_hash(8, &forged));
        events.insert(
            7,
            ChainedEvent {
                index: 8,
                hash,
                event: forged,
            },
        );
        for later in &mut events[8..] {
            later.index += 1;
        }
        check(&events, &checkpoints, Some(9));
        // ...and where a checkpoint falls on the forged index, everything since the one
        // before is suspect.
        let (mut events, checkpoints) = intact();
        let forged = event(99);
        let hash = chain_hash(&events[4].hash, &leaf_hash(6, &forged));
        events.insert(
            5,
            ChainedEvent {
                index: 6,
                hash,
                event: forged,
            },
        );
        for later in &mut events[6..] {
            later.index += 1;
        }
        check(&events, &checkpoints, Some(4));
    }

    #[test]
    fn a_chain_rewritten_with_fresh_hashes_fails_at_the_checkpoint() {
        let (mut events, checkpoints) = intact();
        // Event 5 edited and every hash from there recomputed: self-consistent, but the
        // checkpoint at 6 does not match; everything after the one at 3 is suspect.
        events[4].event.actor = "usr_mallory".into();
        let mut head = ChainHead {
            index: 4,
            hash: events[3].hash,
        };
        for stored in &mut events[4..] {
            head = head.next(&stored.event);
            stored.hash = head.hash;
        }
        check(&events, &checkpoints, Some(4));
    }

    #[test]
    fn truncating_the_tail_names_the_first_missing_index() {
        let (mut events, checkpoints) = intact();
        events.truncate(8);
        check(&events, &checkpoints, Some(9));
        // Cut below every checkpoint.
        let (mut events, checkpoints) = intact();
        events.truncate(2);
        check(&events, &checkpoints, Some(3));
    }

    #[test]
    fn checkpoints_must_be_signed_by_the_key_and_in_order() {
        let (events, mut checkpoints) = intact();
        checkpoints[1].signature[10] ^= 1;
        check(&events, &checkpoints, Some(6));
        let (events, mut checkpoints) = intact();
        checkpoints[2].index = 9;
        check(&events, &checkpoints, Some(9));
        // Another key's checkpoints of the same chain.
        let (events, _) = intact();
        let foreign: Vec<_> = [3, 6]
            .iter()
            .map(|&index| checkpoint_at(&events, index, &key(2)))
            .collect();
        check(&events, &foreign, Some(3));
        // Out of order.
        let (events, mut checkpoints) = intact();
        checkpoints.swap(0, 1);
        check(&events, &checkpoints, Some(3));
        // None at all, with events.
        check(&events, &[], Some(1));
    }

    #[test]
    fn checkpoint_lines_round_trip_and_a_torn_last_line_is_ignored() {
        let (events, checkpoints) = intact();
        let mut text: String = checkpoints
            .iter()
            .map(|checkpoint| checkpoint.to_line() + "\n")
            .collect();
        assert_eq!(
            parse_checkpoints(&text).unwrap(),
            (checkpoints.clone(), false)
        );
        let extra = checkpoint_at(&events, 10, &key(1)).to_line();
        text.push_str(&extra[..extra.len() / 2]);
        assert_eq!(
            parse_checkpoints(&text).unwrap(),
            (checkpoints.clone(), true)
        );
        // A broken line followed by others is not a torn write.
        let broken = format!(
            "{}\n{{\"index\":\n{}\n",
            checkpoints[0].to_line(),
            checkpoints[1].to_line()
        );
        assert_eq!(
            parse_checkpoints(&broken).map_err(|failure| failure.index),
            Err(4)
        );
        assert_eq!(parse_checkpoints("").unwrap(), (Vec::new(), false));
    }

    #[test]
    fn encoding_is_unambiguous() {
        // Moving text between adjacent fields changes the encoding.
        let mut a = event(1);
        let mut b = event(1);
        a.request_id = "ab".into();
        a.actor = "c".into();
        b.request_id = "a".into();
        b.actor = "bc".into();
        assert_ne!(encode(1, &a), encode(1, &b));
        // Absent and empty differ; the index is part of the leaf.
        let mut empty = event(1);
        empty.detail = Some(String::new());
        assert_ne!(encode(1, &event(1)), encode(1, &empty));
        assert_ne!(leaf_hash(1, &event(1)), leaf_hash(2, &event(1)));
        // A leaf can never be taken for a node.
        assert_ne!(genesis(), [0; 32]);
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(from_hex::<2>("0aFf"), Some([0x0a, 0xff]));
        assert_eq!(from_hex::<2>("0a"), None);
        assert_eq!(from_hex::<1>("zz"), None);
        assert_eq!(to_hex(&[0x0a, 0xff]), "0aff");
    }
}
