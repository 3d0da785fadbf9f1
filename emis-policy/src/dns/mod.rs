//! Reading the DNS answers the router sees, for learned hostnames: which names resolved
//! to which addresses, for how long. Built on hickory-proto's decoder, which refuses
//! compression pointers that do not point backwards (so no loops), labels over 63 and
//! names over 255 bytes.
//!
//! Only the answer section is read, and in it only what the question leads to: the
//! question's name, the names a CNAME chain from it reaches, and the A and AAAA records
//! of those names. Each address comes with every name on its chain (so a rule naming
//! either the asked-for name or an alias counts it) and the smallest TTL along it (the
//! mapping lasts only as long as its weakest link).
//!
//! Anything odd rejects the whole response with a [`Reject`] reason the daemon counts; a
//! record with TTL 0 is skipped and counted. Nothing here panics on any input.

use std::net::IpAddr;

use hickory_proto::{
    op::{Header, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, RData, Record},
    serialize::binary::{BinDecodable, BinDecoder, DecodeError},
};

use crate::hostnames::normalize;

pub mod craft;

/// Answer records read from one response; a longer answer section is rejected.
pub const MAX_ANSWERS: usize = 64;
/// CNAME links followed from the question.
pub const MAX_CHAIN: usize = 8;

/// One address an answer gave for a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Lower case, without the trailing dot.
    pub name: String,
    pub addr: IpAddr,
    /// Seconds: the smallest TTL on the chain from the question to the address.
    pub ttl: u32,
}

/// What one response taught, and what of it was skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    pub answers: Vec<Answer>,
    /// A or AAAA records of the chain with TTL 0.
    pub zero_ttl: u32,
    /// The copy was cut before the end of the message; the records before the cut were read.
    pub snapped: bool,
}

/// Why a response taught nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    /// A query, or an opcode other than QUERY.
    NotResponse,
    /// An error rcode (NXDOMAIN, SERVFAIL, ...): nothing to learn.
    ErrorCode,
    /// Not exactly one question, or a question of a class other than IN.
    Question,
    /// The message ends inside a header, name or record.
    Truncated,
    /// A compression pointer that does not point backwards, or labels that overlap.
    CompressionLoop,
    /// A label over 63 bytes or a name over 255.
    NameTooLong,
    /// More than [`MAX_ANSWERS`] answer records.
    TooManyRecords,
    /// Anything else the decoder refused.
    Malformed,
}

impl Reject {
    pub const ALL: [Reject; 8] = [
        Reject::NotResponse,
        Reject::ErrorCode,
        Reject::Question,
        Reject::Truncated,
        Reject::CompressionLoop,
        Reject::NameTooLong,
        Reject::TooManyRecords,
        Reject::Malformed,
    ];

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Reject::NotResponse => "not_response",
            Reject::ErrorCode => "error_rcode",
            Reject::Question => "question",
            Reject::Truncated => "truncated",
            Reject::CompressionLoop => "compression_loop",
            Reject::NameTooLong => "name_too_long",
            Reject::TooManyRecords => "too_many_records",
            Reject::Malformed => "malformed",
        }
    }

    fn of(error: &DecodeError) -> Reject {
        match error {
            DecodeError::InsufficientBytes => Reject::Truncated,
            DecodeError::PointerNotPriorToLabel { .. }
            | DecodeError::LabelOverlapsWithOther { .. } => Reject::CompressionLoop,
            DecodeError::LabelBytesTooLong(_) | DecodeError::DomainNameTooLong(_) => {
                Reject::NameTooLong
            }
            _ => Reject::Malformed,
        }
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Reads a DNS response. `snapped`: the bytes are the first part of a longer message (the
/// kernel copies at most [`DNS_SNAP_LEN`](emis_common::DNS_SNAP_LEN)); an answer section
/// cut there keeps the records before the cut.
pub fn read_response(message: &[u8], snapped: bool) -> Result<Reading, Reject> {
    let mut decoder = BinDecoder::new(message);
    let header = Header::read(&mut decoder).map_err(|e| Reject::of(&e))?;
    let meta = &header.metadata;
    if meta.message_type != MessageType::Response || meta.op_code != OpCode::Query {
        return Err(Reject::NotResponse);
    }
    if meta.response_code != ResponseCode::NoError {
        return Err(Reject::ErrorCode);
    }
    if header.counts.queries != 1 {
        return Err(Reject::Question);
    }
    let question = Query::read(&mut decoder).map_err(|e| Reject::of(&e))?;
    if question.query_class != DNSClass::IN {
        return Err(Reject::Question);
    }
    let count = header.counts.answers as usize;
    if count > MAX_ANSWERS {
        return Err(Reject::TooManyRecords);
    }
    let mut records = Vec::with_capacity(count);
    let mut cut = false;
    for _ in 0..count {
        match Record::<RData>::read(&mut decoder) {
            Ok(record) => records.push(record),
            Err(DecodeError::InsufficientBytes) if snapped => {
                cut = true;
                break;
            }
            Err(e) => return Err(Reject::of(&e)),
        }
    }
    let question = normalize(&question.name.to_ascii()).ok_or(Reject::Malformed)?;
    let mut reading = follow(&question, &records);
    reading.snapped = cut;
    Ok(reading)
}

/// A name of the answer section, or `None` if it is no hostname (then nothing leads to it).
fn owner(record: &Record) -> Option<String> {
    normalize(&record.name.to_ascii())
}

/// The addresses the question's CNAME chain leads to, each with the chain's names.
fn follow(question: &str, records: &[Record]) -> Reading {
    let mut reading = Reading::default();
    // (name, smallest TTL so far), from the question down the CNAME links.
    let mut chain: Vec<(String, u32)> = vec![(question.to_string(), u32::MAX)];
    for _ in 0..MAX_CHAIN {
        let (last, ttl) = chain.last().cloned().unwrap_or_default();
        let next = records.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if r.dns_class == DNSClass::IN && owner(r)? == last => {
                Some((normalize(&target.0.to_ascii())?, ttl.min(r.ttl)))
            }
            _ => None,
        });
        match next {
            // A loop of aliases ends the chain where it closes.
            Some((name, ttl)) if !chain.iter().any(|(n, _)| *n == name) => chain.push((name, ttl)),
            _ => break,
        }
    }
    for record in records {
        if record.dns_class != DNSClass::IN {
            continue;
        }
        let addr = match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        let Some(name) = owner(record) else { continue };
        let Some(at) = chain.iter().position(|(n, _)| *n == name) else {
            continue;
        };
        let ttl = chain[at].1.min(record.ttl);
        if ttl == 0 {
            reading.zero_ttl += 1;
            continue;
        }
        for (name, _) in &chain[..=at] {
            reading.answers.push(Answer {
                name: name.clone(),
                addr,
                ttl,
            });
        }
    }
    reading
}

/// How long a learned address stays: the record's TTL plus a grace period, within a floor
/// and a ceiling, so a client that connects just after the TTL ran out is still counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiry {
    pub grace_s: u64,
    pub floor_s: u64,
    pub ceiling_s: u64,
}

impl Default for Expiry {
    fn default() -> Self {
        Expiry {
            grace_s: 120,
            floor_s: 30,
            ceiling_s: 86_400,
        }
    }
}

impl Expiry {
    /// Seconds an address learned with `ttl` is kept.
    pub fn lifetime_s(&self, ttl: u32) -> u64 {
        (ttl as u64 + self.grace_s)
            .max(self.floor_s)
            .min(self.ceiling_s.max(self.floor_s))
    }
}

#[cfg(test)]
mod tests;
