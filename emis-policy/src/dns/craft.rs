//! DNS responses written byte by byte, for tests, the lab and the fuzz seeds: ordinary
//! ones (with or without compression pointers) and the hostile shapes the reader must
//! refuse, which no well-behaved encoder would write.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The data of one answer record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
}

/// One answer record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rr {
    pub name: String,
    pub ttl: u32,
    pub data: Data,
}

impl Rr {
    pub fn a(name: &str, ttl: u32, addr: &str) -> Rr {
        Rr {
            name: name.into(),
            ttl,
            data: Data::A(addr.parse().expect("an IPv4 address")),
        }
    }
    pub fn aaaa(name: &str, ttl: u32, addr: &str) -> Rr {
        Rr {
            name: name.into(),
            ttl,
            data: Data::Aaaa(addr.parse().expect("an IPv6 address")),
        }
    }
    pub fn cname(name: &str, ttl: u32, target: &str) -> Rr {
        Rr {
            name: name.into(),
            ttl,
            data: Data::Cname(target.into()),
        }
    }
}

/// A response to one question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub id: u16,
    pub question: String,
    /// 1 (A) or 28 (AAAA).
    pub qtype: u16,
    pub rcode: u8,
    pub answers: Vec<Rr>,
    /// Write a name met before as a pointer to it, as servers do.
    pub compress: bool,
}

impl Response {
    pub fn new(question: &str, answers: Vec<Rr>) -> Response {
        Response {
            id: 0x4242,
            question: question.into(),
            qtype: 1,
            rcode: 0,
            answers,
            compress: true,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&self.id.to_be_bytes());
        // QR, RD, RA and the rcode.
        out.extend_from_slice(&[0x81, 0x80 | (self.rcode & 0x0f)]);
        for count in [1, self.answers.len() as u16, 0, 0] {
            out.extend_from_slice(&count.to_be_bytes());
        }
        let mut names: Vec<(String, u16)> = Vec::new();
        self.name(&mut out, &mut names, &self.question);
        out.extend_from_slice(&self.qtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        for rr in &self.answers {
            self.name(&mut out, &mut names, &rr.name);
            let kind: u16 = match rr.data {
                Data::A(_) => 1,
                Data::Aaaa(_) => 28,
                Data::Cname(_) => 5,
            };
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&1u16.to_be_bytes());
            out.extend_from_slice(&rr.ttl.to_be_bytes());
            let len_at = out.len();
            out.extend_from_slice(&[0, 0]);
            match &rr.data {
                Data::A(a) => out.extend_from_slice(&a.octets()),
                Data::Aaaa(a) => out.extend_from_slice(&a.octets()),
                Data::Cname(target) => self.name(&mut out, &mut names, target),
            }
            let len = (out.len() - len_at - 2) as u16;
            out[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
        }
        out
    }

    /// A name in wire form: whole, or (compressing) as a pointer to its longest suffix
    /// already written.
    fn name(&self, out: &mut Vec<u8>, seen: &mut Vec<(String, u16)>, name: &str) {
        let name = name.trim_end_matches('.');
        let labels: Vec<&str> = if name.is_empty() {
            vec![]
        } else {
            name.split('.').collect()
        };
        for i in 0..labels.len() {
            let suffix = labels[i..].join(".").to_ascii_lowercase();
            if self.compress {
                if let Some((_, at)) = seen.iter().find(|(n, _)| *n == suffix) {
                    out.extend_from_slice(&(0xc000 | at).to_be_bytes());
                    return;
                }
                if out.len() < 0x3fff {
                    seen.push((suffix, out.len() as u16));
                }
            }
            out.push(labels[i].len() as u8);
            out.extend_from_slice(labels[i].as_bytes());
        }
        out.push(0);
    }
}

/// A response whose question name is a compression pointer to itself.
pub fn pointer_loop() -> Vec<u8> {
    let mut m = header(1, 0);
    m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    m
}

/// A response whose answer's name points forward, into its own record.
pub fn forward_pointer() -> Vec<u8> {
    let mut m = header(1, 1);
    m.extend_from_slice(&[1, b'a', 0, 0, 1, 0, 1]);
    let at = m.len() as u16 + 2;
    m.extend_from_slice(&(0xc000 | at).to_be_bytes());
    m.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1]);
    m
}

/// A response whose question holds a 64-byte label.
pub fn long_label() -> Vec<u8> {
    let mut m = header(1, 0);
    m.push(64);
    m.extend_from_slice(&[b'a'; 64]);
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}

/// A response whose question's name runs past 255 bytes (five 63-byte labels).
pub fn huge_name() -> Vec<u8> {
    let mut m = header(1, 0);
    for _ in 0..5 {
        m.push(63);
        m.extend_from_slice(&[b'a'; 63]);
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}

fn header(questions: u16, answers: u16) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x81, 0x80];
    for count in [questions, answers, 0, 0] {
        m.extend_from_slice(&count.to_be_bytes());
    }
    m
}
