//! Sidecar security and integrity, judged from both ends of the Connect
//! scenario's traffic: what fcc sent and accepted as answers, what fcs
//! received, and what the attacker tried.
//!
//! - Every request fcs received was sent by fcc: fcs listens on loopback
//!   only, so a request from anyone else got through a sidecar that should
//!   have refused it (plaintext, a forged or expired certificate).
//! - Every answer fcc accepted is for a request fcs received: an answer fcs
//!   never saw came from an impostor that fcc's sidecar should have
//!   refused (wrong SPIFFE ID).
//! - Answers are byte-for-byte the echo of the request.
//! - Nothing reaches fcs in a window where the intention denies fcc.
//! - No request goes unanswered in a window that must lose none (a leaf
//!   renewal, a root rotation, fcs00's agent restarting).
//! - Every attack kind ran, and none got an answer.
//! - Enough real traffic flowed for the rest to mean something.

use std::collections::BTreeSet;

/// The fewest answers a passing run must show.
pub const MIN_ANSWERS: usize = 20;
/// Attack kinds that must each have run.
pub const ATTACK_KINDS: [&str; 7] = [
    "plaintext",
    "direct",
    "forged-ca",
    "expired-leaf",
    "rpc-plaintext-join",
    "rpc-client-cert-join",
    "rpc-forged-ca-join",
];

/// One attack attempt.
#[derive(Clone, Debug)]
pub struct Attack {
    /// Which kind.
    pub kind: String,
    /// The nonce its request carried.
    pub nonce: String,
    /// Whether anything answered it.
    pub answered: bool,
}

/// Both ends' records; times are simulated milliseconds since the
/// scenario began.
#[derive(Clone, Debug, Default)]
pub struct Traffic {
    sent: BTreeSet<String>,
    /// (nonce, ms) of every correct answer.
    answers: Vec<(String, u64)>,
    /// (nonce, ms) of every request fcs got.
    received: Vec<(String, u64)>,
    corrupt: Vec<String>,
    /// (nonce, ms) of every request fcc gave up on.
    failures: Vec<(String, u64)>,
    /// Windows (from, to, why) in which nothing may reach fcs.
    forbidden: Vec<(u64, u64, String)>,
    /// Windows (from, to, across what) in which no request may fail.
    lossless: Vec<(u64, u64, String)>,
    /// What the attacker tried.
    pub attacks: Vec<Attack>,
}

impl Traffic {
    /// fcs got a request carrying `nonce`.
    pub fn fcs_received(&mut self, nonce: &str, at_ms: u64) {
        self.received.push((nonce.to_owned(), at_ms));
    }

    /// fcc is about to send `nonce`.
    pub fn fcc_sent(&mut self, nonce: &str) {
        self.sent.insert(nonce.to_owned());
    }

    /// What came back for `line` (`None`: nothing, which is allowed).
    pub fn fcc_answer(&mut self, nonce: &str, line: &str, answer: Option<&str>, at_ms: u64) {
        match answer {
            Some(a) if a.strip_prefix("ECHO ") == Some(line) => {
                self.answers.push((nonce.to_owned(), at_ms));
            }
            Some(a) => self.corrupt.push(format!(
                "request {nonce} was answered {:?} (expected its echo)",
                a.chars().take(80).collect::<String>()
            )),
            None => self.failures.push((nonce.to_owned(), at_ms)),
        }
    }

    /// Requests fcs received so far.
    pub fn received(&self) -> usize {
        self.received.len()
    }

    /// Correct answers so far.
    pub fn answered(&self) -> usize {
        self.answers.len()
    }

    /// The longest stretch within `[from, to]` without a correct answer,
    /// in ms.
    pub fn longest_gap(&self, from: u64, to: u64) -> u64 {
        let mut last = from;
        let mut worst = 0;
        for (_, at) in self.answers.iter().filter(|(_, t)| *t >= from && *t <= to) {
            worst = worst.max(at - last);
            last = *at;
        }
        worst.max(to.saturating_sub(last))
    }

    /// Nothing may reach fcs in `[from, to]`, because `why` (a deny
    /// intention holds, fcc's leaf is expired on fcs00's clock).
    pub fn forbid_between(&mut self, from: u64, to: u64, why: &str) {
        self.forbidden.push((from, to, why.to_owned()));
    }

    /// Requests fcc finished (answered or given up on) in `[from, to]`.
    pub fn attempts_between(&self, from: u64, to: u64) -> usize {
        self.failures
            .iter()
            .chain(&self.answers)
            .filter(|(_, at)| *at >= from && *at <= to)
            .count()
    }

    /// Every request fcc gives up on in `[from, to]` is a lost request,
    /// which `what` may not cause.
    pub fn lossless_between(&mut self, from: u64, to: u64, what: &str) {
        self.lossless.push((from, to, what.to_owned()));
    }
}

/// The verdict on a run's traffic.
pub fn check(t: &Traffic) -> Result<(), String> {
    if let Some(c) = t.corrupt.first() {
        return Err(format!("sidecar integrity: {c}"));
    }
    let received: BTreeSet<&str> = t.received.iter().map(|(n, _)| n.as_str()).collect();
    if let Some(n) = received.iter().find(|n| !t.sent.contains(**n)) {
        return Err(format!(
            "sidecar security: fcs received request {n:?}, which fcc never sent: an attacker's \
             bytes got through a sidecar"
        ));
    }
    if let Some((n, _)) = t
        .answers
        .iter()
        .find(|(n, _)| !received.contains(n.as_str()))
    {
        return Err(format!(
            "sidecar security: fcc accepted an answer to {n:?}, a request fcs never received: \
             something impersonated fcs"
        ));
    }
    for (from, to, why) in &t.forbidden {
        if let Some((n, at)) = t.received.iter().find(|(_, at)| at >= from && at <= to) {
            return Err(format!(
                "sidecar security: fcs received {n:?} {} ms into a window where nothing may \
                 reach it ({why})",
                at - from
            ));
        }
    }
    for (from, to, what) in &t.lossless {
        if let Some((n, at)) = t.failures.iter().find(|(_, at)| at >= from && at <= to) {
            return Err(format!(
                "sidecar availability: fcc's request {n:?} got no answer {} ms into {what}, \
                 which must lose no request",
                at - from
            ));
        }
    }
    for kind in ATTACK_KINDS {
        if !t.attacks.iter().any(|a| a.kind == kind) {
            return Err(format!(
                "the {kind} attack never ran: the check would prove nothing"
            ));
        }
    }
    if let Some(a) = t.attacks.iter().find(|a| a.answered) {
        return Err(format!(
            "sidecar security: the {} attack ({}) got an answer",
            a.kind, a.nonce
        ));
    }
    if t.answers.len() < MIN_ANSWERS {
        return Err(format!(
            "only {} requests went through the sidecars (at least {MIN_ANSWERS} expected)",
            t.answers.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passing() -> Traffic {
        let mut t = Traffic::default();
        for i in 0..MIN_ANSWERS {
            let n = format!("fcc-{i}");
            let line = format!("REQ {n} x");
            t.fcc_sent(&n);
            t.fcs_received(&n, i as u64);
            t.fcc_answer(&n, &line, Some(&format!("ECHO {line}")), i as u64);
        }
        for kind in ATTACK_KINDS {
            t.attacks.push(Attack {
                kind: kind.into(),
                nonce: format!("evil-{kind}"),
                answered: false,
            });
        }
        t
    }

    #[test]
    fn each_planted_flaw_is_caught() {
        assert_eq!(check(&passing()), Ok(()));
        let mut t = passing();
        t.fcs_received("evil-plaintext", 5);
        assert!(check(&t).unwrap_err().contains("never sent"));
        let mut t = passing();
        t.fcc_sent("fcc-x");
        t.fcc_answer("fcc-x", "REQ fcc-x y", Some("ECHO REQ fcc-x y"), 30);
        assert!(check(&t).unwrap_err().contains("impersonated"));
        let mut t = passing();
        t.fcc_answer("fcc-1", "REQ fcc-1 x", Some("ECHO REQ fcc-1 z"), 31);
        assert!(check(&t).unwrap_err().contains("integrity"));
        let mut t = passing();
        t.attacks[2].answered = true;
        assert!(check(&t).unwrap_err().contains("forged-ca"));
        let mut t = passing();
        t.attacks.pop();
        assert!(check(&t).unwrap_err().contains("never ran"));
        let mut t = passing();
        t.forbid_between(10, 12, "fcc -> fcs is denied");
        assert!(check(&t).unwrap_err().contains("denied"));
        assert_eq!(
            passing().longest_gap(0, 100),
            100 - (MIN_ANSWERS as u64 - 1)
        );
        let mut t = passing();
        t.fcc_sent("fcc-lost");
        t.fcc_answer("fcc-lost", "REQ fcc-lost x", None, 50);
        assert_eq!(check(&t), Ok(()), "a failure outside every lossless window");
        t.lossless_between(40, 60, "the root rotation");
        assert!(check(&t).unwrap_err().contains("fcc-lost"));
        let mut t = passing();
        t.answers.truncate(3);
        assert!(check(&t).unwrap_err().contains("only 3"));
    }
}
