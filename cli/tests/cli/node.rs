//! `walrus node` through the binary: three replicas on loopback with one of
//! them SIGKILLed while writes stream into it, bad input on standard input,
//! restarts after a clean shutdown, and bad command-line arguments.
//!
//! Every child's standard output is read by its own thread into a channel;
//! the tests wait for specific lines (with a generous patience that only
//! turns a hang into a failure) and never sleep to synchronise.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{copy_tree, EXE, PATIENCE, SIGKILL};

const SYNC_INTERVAL_MS: &str = "300";
/// Events that answer a command; everything else is asynchronous.
const ANSWERS: &[&str] = &["ok", "error", "value", "dump", "peers"];

/// A running `walrus node`, killed (SIGKILL) and reaped when dropped so that
/// a failing test leaves no process behind.
struct NodeProc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    /// Lines of standard output; `None` once it is closed.
    lines: Receiver<Option<String>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The `listening` address, ending with `/p2p/<peer id>`.
    addr: String,
    peer_id: String,
    /// Asynchronous events, in the order they were printed.
    events: Vec<Value>,
    /// Answers not yet taken by `answer`.
    answers: VecDeque<Value>,
    /// An asynchronous event was read since this was last cleared.
    progress: bool,
    /// The last lines read, for failure messages.
    tail: VecDeque<String>,
}

impl NodeProc {
    /// Starts `walrus node --data <data> --sync-interval-ms 300 <args…>` and
    /// reads its first line, which must be the `listening` event. Every
    /// line read later also sends a unit to `notify`, if given.
    fn spawn(name: &str, data: &Path, args: &[&str], notify: Option<Sender<()>>) -> NodeProc {
        let mut child = Command::new(EXE)
            .arg("node")
            .arg("--data")
            .arg(data)
            .args(["--sync-interval-ms", SYNC_INTERVAL_MS])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn walrus node");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx.send(Some(line)).is_err() {
                            return;
                        }
                        if let Some(n) = &notify {
                            let _ = n.send(());
                        }
                    }
                }
            }
            let _ = tx.send(None);
            if let Some(n) = &notify {
                let _ = n.send(());
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut err_pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err_pipe.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let stdin = child.stdin.take();
        let mut node = NodeProc {
            name: name.to_string(),
            child,
            stdin,
            lines,
            stderr,
            addr: String::new(),
            peer_id: String::new(),
            events: Vec::new(),
            answers: VecDeque::new(),
            progress: false,
            tail: VecDeque::new(),
        };
        let first = match node.recv_line(PATIENCE) {
            Some(line) => line,
            None => panic!("{} exited before listening\n{}", node.name, node.context()),
        };
        let v = node.parse(&first);
        assert_eq!(v["event"], "listening", "{}: the first line must be `listening`\n{}", node.name, node.context());
        let addr = v["addr"].as_str().expect("listening addr is a string").to_string();
        assert!(addr.starts_with("/ip4/127.0.0.1/tcp/"), "{}: listening on {addr}", node.name);
        let peer_id = match addr.split_once("/p2p/") {
            Some((_, id)) if !id.is_empty() && !id.contains('/') => id.to_string(),
            _ => panic!("{}: listening address {addr} does not end with /p2p/<peer id>", node.name),
        };
        node.addr = addr;
        node.peer_id = peer_id;
        node
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// What a failure message needs to know about this node.
    fn context(&self) -> String {
        let err = self.stderr_text();
        let err = if err.len() > 4000 { &err[err.len() - 4000..] } else { &err[..] };
        let mut s = format!("--- {} ({}) last lines of stdout:\n", self.name, self.addr);
        for l in &self.tail {
            s.push_str(l);
            s.push('\n');
        }
        s.push_str(&format!("--- {} stderr:\n{err}", self.name));
        s
    }

    /// The next line of standard output, or `None` once it is closed.
    /// Panics if nothing comes within `patience`.
    fn recv_line(&mut self, patience: Duration) -> Option<String> {
        match self.lines.recv_timeout(patience) {
            Ok(line) => line,
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                panic!("{}: no output for {patience:?}\n{}", self.name, self.context())
            }
        }
    }

    /// Parses one line: a JSON object with a string `event`.
    fn parse(&mut self, line: &str) -> Value {
        let mut shown: String = line.trim_end().chars().take(300).collect();
        if shown.len() < line.trim_end().len() {
            shown.push('…');
        }
        self.tail.push_back(shown);
        if self.tail.len() > 30 {
            self.tail.pop_front();
        }
        assert!(line.ends_with('\n'), "{}: unterminated line {line:?}", self.name);
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{}: not a JSON line ({e}): {line:?}\n{}", self.name, self.context()));
        assert!(v["event"].is_string(), "{}: line without an event: {line}", self.name);
        v
    }

    /// Files a line as an answer or an asynchronous event.
    fn classify(&mut self, line: &str) {
        let v = self.parse(line);
        let event = v["event"].as_str().unwrap_or_default();
        if ANSWERS.contains(&event) {
            self.answers.push_back(v);
        } else {
            self.progress = true;
            self.events.push(v);
        }
    }

    /// Reads one more line; panics if standard output closed.
    fn pump(&mut self) {
        match self.recv_line(PATIENCE) {
            Some(line) => self.classify(&line),
            None => panic!("{} exited unexpectedly: {:?}\n{}", self.name, self.child.try_wait(), self.context()),
        }
    }

    /// Files every line already received, without waiting.
    fn drain(&mut self) {
        loop {
            match self.lines.try_recv() {
                Ok(Some(line)) => self.classify(&line),
                Ok(None) | Err(TryRecvError::Disconnected) => {
                    panic!("{} exited unexpectedly: {:?}\n{}", self.name, self.child.try_wait(), self.context())
                }
                Err(TryRecvError::Empty) => return,
            }
        }
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        let name = self.name.clone();
        let stdin = self.stdin.as_mut().unwrap_or_else(|| panic!("{name}: stdin already closed"));
        if let Err(e) = stdin.write_all(bytes).and_then(|()| stdin.flush()) {
            panic!("{name}: writing to stdin: {e}\n{}", self.context());
        }
    }

    fn send(&mut self, line: &str) {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.send_bytes(&bytes);
    }

    /// The next answer to a command, skipping asynchronous events.
    fn answer(&mut self) -> Value {
        while self.answers.is_empty() {
            self.pump();
        }
        self.answers.pop_front().expect("an answer")
    }

    fn request(&mut self, line: &str) -> Value {
        self.send(line);
        self.answer()
    }

    /// Waits for an asynchronous event at index `from` or later that
    /// satisfies `pred`.
    fn wait_event(&mut self, from: usize, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = from;
        loop {
            if let Some(v) = self.events[seen..].iter().find(|v| pred(v)) {
                return v.clone();
            }
            seen = self.events.len();
            assert!(Instant::now() < deadline, "{}: no {what} within {PATIENCE:?}\n{}", self.name, self.context());
            self.pump();
        }
    }

    /// Waits until this node has reported a connection to each of `peers`.
    fn wait_connected(&mut self, peers: &[&str]) {
        for p in peers {
            self.wait_event(0, &format!("peer_connected from {p}"), |v| {
                v["event"] == "peer_connected" && v["peer"] == *p
            });
        }
    }

    /// Checks that `ans` acknowledges `put key value` and returns its
    /// actor and sequence number.
    fn check_put(&self, ans: &Value, key: &str, value: &str) -> (String, u64) {
        assert!(
            ans["event"] == "ok" && ans["cmd"] == "put" && ans["key"] == key && ans["value"] == value,
            "{}: expected the acknowledgement of put {key:?}, got {ans}\n{}",
            self.name,
            self.context()
        );
        let actor = ans["actor"].as_str().expect("actor is a string").to_string();
        let seq = ans["seq"].as_u64().expect("seq is a number");
        (actor, seq)
    }

    fn dump(&mut self) -> Value {
        self.send("dump");
        self.dump_answer()
    }

    fn dump_answer(&mut self) -> Value {
        let d = self.answer();
        assert_eq!(d["event"], "dump", "{}: {d}", self.name);
        assert!(d["entries"].is_object() && d["clock"].is_object(), "{}: {d}", self.name);
        d
    }

    /// Reads standard output to its end and reaps the child.
    fn wait_exit(&mut self) -> ExitStatus {
        while let Some(line) = self.recv_line(PATIENCE) {
            self.classify(&line);
        }
        self.child.wait().expect("wait for walrus node")
    }

    fn sigkill(&mut self) -> ExitStatus {
        self.child.kill().expect("SIGKILL walrus node");
        self.child.wait().expect("wait for walrus node")
    }

    fn assert_clean_exit(&mut self, status: ExitStatus) {
        assert_eq!(status.code(), Some(0), "{}: {status:?}\n{}", self.name, self.context());
        let err = self.stderr_text();
        assert!(!err.contains("panicked"), "{}: {err}", self.name);
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn expect_error(node: &NodeProc, ans: &Value, after: &str) {
    assert!(
        ans["event"] == "error" && ans["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}: {after:?} should get an error, got {ans}\n{}",
        node.name,
        node.context()
    );
}

/// The values of a dump entry: one string, or an array of at least two
/// distinct strings (concurrent writes).
fn value_set(v: &Value) -> BTreeSet<String> {
    match v {
        Value::String(s) => BTreeSet::from([s.clone()]),
        Value::Array(items) => {
            let set: BTreeSet<String> =
                items.iter().map(|i| i.as_str().expect("values are strings").to_string()).collect();
            assert!(items.len() >= 2 && set.len() == items.len(), "bad concurrent values {v}");
            set
        }
        other => panic!("bad entry value {other}"),
    }
}

/// Issues `dump` on every node until all of them report the same entries
/// and clock. After a round that differs it waits for an asynchronous event
/// (sync progress) printed after that round's dumps were asked for, then
/// asks again.
fn converge(nodes: &mut [&mut NodeProc], notify: &Receiver<()>) -> Value {
    let deadline = Instant::now() + PATIENCE;
    let mut rounds = 0u32;
    loop {
        rounds += 1;
        for n in nodes.iter_mut() {
            n.drain();
            assert!(n.answers.is_empty(), "{}: unexpected answer {}", n.name, n.answers[0]);
            n.progress = false;
            n.send("dump");
        }
        let dumps: Vec<Value> = nodes.iter_mut().map(|n| n.dump_answer()).collect();
        let same = dumps.iter().all(|d| d["entries"] == dumps[0]["entries"] && d["clock"] == dumps[0]["clock"]);
        if same {
            eprintln!("converged after {rounds} dump rounds");
            return dumps[0].clone();
        }
        loop {
            if nodes.iter().any(|n| n.progress) {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let mut msg = format!("no convergence within {PATIENCE:?} ({rounds} rounds)\n");
                for (n, d) in nodes.iter().zip(&dumps) {
                    let keys = d["entries"].as_object().map_or(0, |m| m.len());
                    msg.push_str(&format!("{}: {keys} keys, clock {}\n", n.name, d["clock"]));
                }
                if let Some(e0) = dumps[0]["entries"].as_object() {
                    for (n, d) in nodes.iter().zip(&dumps).skip(1) {
                        let e = d["entries"].as_object().cloned().unwrap_or_default();
                        let diff: Vec<&String> =
                            e0.keys().chain(e.keys()).filter(|k| e0.get(*k) != e.get(*k)).take(20).collect();
                        msg.push_str(&format!("{} differs from {} on {diff:?}\n", n.name, nodes[0].name));
                    }
                }
                for n in nodes.iter() {
                    msg.push_str(&n.context());
                    msg.push('\n');
                }
                panic!("{msg}");
            }
            // Wakes up on any line of any node (possibly a stale one).
            let _ = notify.recv_timeout(left);
            for n in nodes.iter_mut() {
                n.drain();
            }
        }
        assert!(Instant::now() < deadline, "still not converged after {rounds} rounds");
    }
}

/// Runs `walrus doc <args…>` on a replica directory and returns its one
/// JSON value.
fn walrus_doc(args: &[&str], dir: &Path) -> Value {
    let (sub, rest) = args.split_first().expect("a subcommand");
    let out =
        Command::new(EXE).args(["doc", sub]).arg(dir).args(rest).stdin(Stdio::null()).output().expect("run walrus doc");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "walrus doc {args:?}: {:?} {err}", out.status);
    serde_json::from_slice(&out.stdout).expect("walrus doc prints one JSON value")
}

/// Writes `put` lines for `pairs` without waiting.
fn send_puts(node: &mut NodeProc, pairs: &[(String, String)]) {
    let mut all = String::new();
    for (k, v) in pairs {
        all.push_str(&format!("put {k} {v}\n"));
    }
    node.send_bytes(all.as_bytes());
}

/// Reads the acknowledgements of `pairs` (sent with `send_puts`): in order,
/// from `actor`, with consecutive sequence numbers after `*last_seq`, which
/// is advanced.
fn read_acks(node: &mut NodeProc, pairs: &[(String, String)], actor: &str, last_seq: &mut u64) {
    for (k, v) in pairs {
        let ans = node.answer();
        let (a, seq) = node.check_put(&ans, k, v);
        assert_eq!(a, actor, "{}: put {k} by another actor", node.name);
        assert_eq!(seq, *last_seq + 1, "{}: put {k} got seq {seq} after {last_seq}", node.name);
        *last_seq = seq;
    }
}

fn pairs(prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n).map(|i| (format!("{prefix}-{i}"), format!("v-{prefix}-{i} with spaces"))).collect()
}

#[test]
fn three_nodes_sigkill_one_mid_stream() {
    const DOC: &str = "notes";
    const SHARED: usize = 4;
    /// Puts written into B in one go; B is killed long before it gets through them.
    const STREAM: usize = 3000;
    /// B is killed once this many of the stream's puts are acknowledged.
    const KILL_AFTER: usize = 40;

    let tmp = tempfile::tempdir().unwrap();
    let (da, db, dc) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    let (notify_tx, notify) = mpsc::channel();
    let doc_args = ["--doc", DOC];

    let mut a = NodeProc::spawn("A", &da, &doc_args, Some(notify_tx.clone()));
    let a_addr = a.addr.clone();
    let mut b = NodeProc::spawn("B", &db, &["--doc", DOC, "--peer", &a_addr], Some(notify_tx.clone()));
    let b_addr = b.addr.clone();
    let mut c =
        NodeProc::spawn("C", &dc, &["--doc", DOC, "--peer", &a_addr, "--peer", &b_addr], Some(notify_tx.clone()));
    let (pa, pb, pc) = (a.peer_id.clone(), b.peer_id.clone(), c.peer_id.clone());
    assert!(pa != pb && pb != pc && pa != pc, "peer ids must differ");
    a.wait_connected(&[&pb, &pc]);
    b.wait_connected(&[&pa, &pc]);
    c.wait_connected(&[&pa, &pb]);

    // What the converged document must hold: exact values for keys with one
    // writer, and for each shared key the last value each writer put there.
    let mut exact: BTreeMap<String, Value> = BTreeMap::new();
    let mut shared_last: BTreeMap<String, BTreeMap<&str, String>> = BTreeMap::new();
    let mut seqs: BTreeMap<&str, u64> = BTreeMap::from([("A", 0), ("B", 0), ("C", 0)]);

    // Phase 1: unique keys on A and C, the shared keys on all three.
    let shared = |who: &str, phase: u32| -> Vec<(String, String)> {
        (0..SHARED).map(|j| (format!("shared-{j}"), format!("{who}-{phase}-{j}"))).collect()
    };
    let (a1, c1) = (pairs("a1", 30), pairs("c1", 30));
    let (a1s, b1s, c1s) = (shared("A", 1), shared("B", 1), shared("C", 1));
    send_puts(&mut a, &a1);
    send_puts(&mut a, &a1s);
    send_puts(&mut b, &b1s);
    send_puts(&mut c, &c1);
    send_puts(&mut c, &c1s);
    // The first acknowledgement names each node's actor.
    let first_ack = |n: &mut NodeProc, (k, v): &(String, String)| {
        let ans = n.answer();
        let (actor, seq) = n.check_put(&ans, k, v);
        assert_eq!(seq, 1, "{}: first put", n.name);
        actor
    };
    let actor_a = first_ack(&mut a, &a1[0]);
    let actor_b = first_ack(&mut b, &b1s[0]);
    let actor_c = first_ack(&mut c, &c1[0]);
    assert!(actor_a != actor_b && actor_b != actor_c && actor_a != actor_c, "actors must differ");
    seqs.insert("A", 1);
    seqs.insert("B", 1);
    seqs.insert("C", 1);
    read_acks(&mut a, &a1[1..], &actor_a, seqs.get_mut("A").unwrap());
    read_acks(&mut a, &a1s, &actor_a, seqs.get_mut("A").unwrap());
    read_acks(&mut b, &b1s[1..], &actor_b, seqs.get_mut("B").unwrap());
    read_acks(&mut c, &c1[1..], &actor_c, seqs.get_mut("C").unwrap());
    read_acks(&mut c, &c1s, &actor_c, seqs.get_mut("C").unwrap());
    for (k, v) in a1.iter().chain(&c1) {
        exact.insert(k.clone(), json!(v));
    }
    for (who, batch) in [("A", &a1s), ("B", &b1s), ("C", &c1s)] {
        for (k, v) in batch.iter() {
            shared_last.entry(k.clone()).or_default().insert(who, v.clone());
        }
    }

    // Phase 2: a stream of puts into B, killed mid-way, while A and C write too.
    let b_base = seqs["B"];
    let stream: Vec<(String, String)> = (1..=STREAM).map(|i| (format!("b-{i}"), format!("vb-{i}"))).collect();
    let mut b_stdin = b.stdin.take().expect("B's stdin");
    let stream_text: String = stream.iter().map(|(k, v)| format!("put {k} {v}\n")).collect();
    // A writer thread, so that a full pipe cannot block the test; it fails
    // with EPIPE once B is dead.
    let writer = std::thread::spawn(move || {
        let r = b_stdin.write_all(stream_text.as_bytes()).and_then(|()| b_stdin.flush());
        drop(b_stdin);
        r.is_ok()
    });
    let (a2, c2) = (pairs("a2", 20), pairs("c2", 20));
    send_puts(&mut a, &a2);
    send_puts(&mut c, &c2);
    let mut b_seq = b_base;
    for (k, v) in &stream[..KILL_AFTER] {
        let ans = b.answer();
        let (actor, seq) = b.check_put(&ans, k, v);
        assert_eq!(actor, actor_b);
        assert_eq!(seq, b_seq + 1, "B: stream put {k} out of order");
        b_seq = seq;
    }
    let b_a_events = a.events.len();
    let status = b.sigkill();
    assert_eq!(status.signal(), Some(SIGKILL), "B must die by SIGKILL mid-stream, not exit: {status:?}");
    // Acknowledgements read before the kill; any already printed after
    // these do not count as acknowledged.
    let acked = KILL_AFTER;
    assert!(acked < STREAM, "the kill must land mid-stream");
    let _ = writer.join().expect("writer thread");
    read_acks(&mut a, &a2, &actor_a, seqs.get_mut("A").unwrap());
    read_acks(&mut c, &c2, &actor_c, seqs.get_mut("C").unwrap());
    for (k, v) in a2.iter().chain(&c2) {
        exact.insert(k.clone(), json!(v));
    }
    a.wait_event(b_a_events, "peer_disconnected of B", |v| v["event"] == "peer_disconnected" && v["peer"] == *pb);

    // Phase 3: B is down. A and C keep writing; A deletes one of its keys and
    // writes `conflict`, which B also writes offline: the two writes are
    // concurrent by construction.
    let (a3, c3) = (pairs("a3", 20), pairs("c3", 20));
    send_puts(&mut a, &a3);
    send_puts(&mut c, &c3);
    send_puts(&mut a, &[("conflict".to_string(), "from-a".to_string())]);
    a.send("del a1-0");
    read_acks(&mut a, &a3, &actor_a, seqs.get_mut("A").unwrap());
    read_acks(&mut c, &c3, &actor_c, seqs.get_mut("C").unwrap());
    read_acks(&mut a, &[("conflict".to_string(), "from-a".to_string())], &actor_a, seqs.get_mut("A").unwrap());
    let del = a.answer();
    assert!(del["event"] == "ok" && del["cmd"] == "del" && del["key"] == "a1-0", "A: {del}");
    assert_eq!(del["actor"], actor_a.as_str());
    *seqs.get_mut("A").unwrap() += 1;
    assert_eq!(del["seq"], seqs["A"]);
    for (k, v) in a3.iter().chain(&c3) {
        exact.insert(k.clone(), json!(v));
    }
    exact.remove("a1-0");
    exact.insert("conflict".into(), json!(["from-a", "from-b"]));

    // B's replica as recovered from its own disk, before any resync: every
    // acknowledged put is there, and the stream survived as a prefix.
    let b_replica = db.join("docs").join(DOC);
    let offline = walrus_doc(&["put", "conflict", "from-b"], &b_replica);
    assert_eq!(offline["actor"], actor_b.as_str(), "B's replica changed actor: {offline}");
    let offline_seq = offline["seq"].as_u64().expect("seq");
    let survived = offline_seq - 1 - b_base;
    assert!(
        survived >= acked as u64,
        "B lost acknowledged puts: {acked} acknowledged, {survived} recovered (offline put got seq {offline_seq})"
    );
    assert!(survived <= STREAM as u64, "B recovered {survived} of {STREAM} stream puts");
    eprintln!("B killed after {acked} acknowledged stream puts; {survived} of {STREAM} recovered");
    let local = walrus_doc(&["dump"], &b_replica);
    assert_eq!(local["clock"][&actor_b], offline_seq, "B's recovered clock: {}", local["clock"]);
    let local_entries = local["entries"].as_object().expect("entries");
    for (i, (k, v)) in stream.iter().enumerate() {
        if (i as u64) < survived {
            assert_eq!(local_entries.get(k), Some(&json!(v)), "B's recovered {k} (acknowledged: {})", i < acked);
        } else {
            assert_eq!(local_entries.get(k), None, "B recovered {k} beyond its clock");
        }
    }
    for (k, _) in &b1s {
        assert!(local_entries.contains_key(k), "B's recovered replica lacks the acknowledged {k}");
    }
    for (k, v) in stream.iter().take(survived as usize) {
        exact.insert(k.clone(), json!(v));
    }
    *seqs.get_mut("B").unwrap() = offline_seq;

    // Phase 4: B restarts on the same data, address and peers; everyone writes.
    let b_port_addr = b_addr.split("/p2p/").next().unwrap().to_string();
    let restart_mark = a.events.len();
    drop(b);
    let mut b = NodeProc::spawn(
        "B'",
        &db,
        &["--doc", DOC, "--peer", &a_addr, "--listen", &b_port_addr],
        Some(notify_tx.clone()),
    );
    assert_eq!(b.addr, b_addr, "B must come back with the same identity and address");
    let first = b.dump();
    assert_eq!(first["clock"][&actor_b], offline_seq, "B's clock after restart: {}", first["clock"]);
    assert_eq!(first["entries"]["b-1"], "vb-1");
    let (a4, b4, c4) = (pairs("a4", 20), pairs("b4", 20), pairs("c4", 20));
    let (a4s, b4s, c4s) = (shared("A", 4), shared("B", 4), shared("C", 4));
    send_puts(&mut a, &a4);
    send_puts(&mut a, &a4s);
    send_puts(&mut b, &b4);
    send_puts(&mut b, &b4s);
    send_puts(&mut c, &c4);
    send_puts(&mut c, &c4s);
    let b_first_new = seqs["B"] + 1;
    read_acks(&mut a, &a4, &actor_a, seqs.get_mut("A").unwrap());
    read_acks(&mut a, &a4s, &actor_a, seqs.get_mut("A").unwrap());
    read_acks(&mut b, &b4, &actor_b, seqs.get_mut("B").unwrap());
    read_acks(&mut b, &b4s, &actor_b, seqs.get_mut("B").unwrap());
    read_acks(&mut c, &c4, &actor_c, seqs.get_mut("C").unwrap());
    read_acks(&mut c, &c4s, &actor_c, seqs.get_mut("C").unwrap());
    assert_eq!(b_first_new, offline_seq + 1, "B's sequence numbers continue after its recovered clock");
    for (k, v) in a4.iter().chain(&b4).chain(&c4) {
        exact.insert(k.clone(), json!(v));
    }
    for (who, batch) in [("A", &a4s), ("B", &b4s), ("C", &c4s)] {
        for (k, v) in batch.iter() {
            shared_last.entry(k.clone()).or_default().insert(who, v.clone());
        }
    }
    a.wait_event(restart_mark, "peer_connected of the restarted B", |v| {
        v["event"] == "peer_connected" && v["peer"] == *pb
    });

    // Convergence, then every acknowledged write must be there.
    let done = converge(&mut [&mut a, &mut b, &mut c], &notify);
    let expected_clock = json!({ &actor_a: seqs["A"], &actor_b: seqs["B"], &actor_c: seqs["C"] });
    assert_eq!(done["clock"], expected_clock, "converged clock");
    // Everything B acknowledged (before the kill and after the restart).
    let b_acked = (b1s.len() + acked + b4.len() + b4s.len()) as u64;
    let b_clock = done["clock"][&actor_b].as_u64().expect("B in the clock");
    assert!(b_clock >= b_acked, "B's clock {b_clock} < its {b_acked} acknowledged puts");
    let entries = done["entries"].as_object().expect("entries");
    for (k, v) in &exact {
        assert_eq!(entries.get(k), Some(v), "converged value of {k}");
    }
    for (k, last) in &shared_last {
        let got = value_set(entries.get(k).unwrap_or_else(|| panic!("shared key {k} is missing")));
        let allowed: BTreeSet<String> = last.values().cloned().collect();
        assert!(got.is_subset(&allowed), "{k}: {got:?} holds a value overwritten by its own writer ({allowed:?})");
    }
    let expected_keys: BTreeSet<&String> = exact.keys().chain(shared_last.keys()).collect();
    let got_keys: BTreeSet<&String> = entries.keys().collect();
    assert_eq!(got_keys, expected_keys, "converged key set");
    for n in [&a, &b, &c] {
        let faults: Vec<&Value> = n.events.iter().filter(|v| v["event"] == "peer_fault").collect();
        assert!(faults.is_empty(), "{}: honest peers reported as faulty: {faults:?}", n.name);
    }

    for n in [&mut a, &mut b, &mut c] {
        n.send("quit");
        let status = n.wait_exit();
        n.assert_clean_exit(status);
    }
}

#[test]
fn bad_input_keeps_node_running() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = NodeProc::spawn("N", &tmp.path().join("n"), &[], None);
    for bad in [
        "frobnicate now",
        "put",
        "put ",
        "get",
        "get two words",
        "del",
        "del missing",
        "connect",
        "connect not-a-multiaddr",
        "connect /ip4/999.0.0.1/tcp/1",
        "dump extra",
        "peers extra",
        "quit now",
    ] {
        let ans = n.request(bad);
        expect_error(&n, &ans, bad);
    }
    assert_eq!(n.request("get missing"), json!({"event": "value", "key": "missing", "value": null}));
    assert_eq!(n.request("peers"), json!({"event": "peers", "peers": []}));
    // Blank lines get no answer: the next answer is the one to `get`.
    n.send("");
    n.send("   ");
    assert_eq!(n.request("get missing\r"), json!({"event": "value", "key": "missing", "value": null}));
    // The value is the rest of the line, spaces included.
    let ans = n.request("put greeting hello  world ");
    let (actor, seq) = n.check_put(&ans, "greeting", "hello  world ");
    assert_eq!(seq, 1);
    assert_eq!(n.request("  get greeting"), json!({"event": "value", "key": "greeting", "value": "hello  world "}));

    // Very long lines.
    let long_junk = "x".repeat(1 << 20);
    let ans = n.request(&long_junk);
    expect_error(&n, &ans, "1 MiB unknown command");
    let ans = n.request(&format!("put big {}", "v".repeat(2 << 20)));
    expect_error(&n, &ans, "put of a 2 MiB value");
    let missing = "k".repeat(100_000);
    assert_eq!(n.request(&format!("get {missing}")), json!({"event": "value", "key": &missing, "value": null}));
    let (long_key, long_value) = ("K".repeat(10_000), "V".repeat(300_000));
    let ans = n.request(&format!("put {long_key} {long_value}"));
    assert_eq!(n.check_put(&ans, &long_key, &long_value), (actor.clone(), 2));
    assert_eq!(
        n.request(&format!("get {long_key}")),
        json!({"event": "value", "key": &long_key, "value": &long_value})
    );

    let dump = n.dump();
    assert_eq!(dump["entries"], json!({"greeting": "hello  world ", &long_key: &long_value}));
    assert_eq!(dump["clock"], json!({ &actor: 2 }));

    n.send("quit");
    let status = n.wait_exit();
    n.assert_clean_exit(status);
    assert!(n.answers.is_empty(), "answers after quit: {:?}", n.answers);
    assert!(n.events.is_empty(), "events of a node without peers: {:?}", n.events);

    // End of input is a clean shutdown too, after answering what came before.
    let mut m = NodeProc::spawn("M", &tmp.path().join("m"), &[], None);
    m.send("get nothing");
    m.send("bogus");
    drop(m.stdin.take());
    let status = m.wait_exit();
    m.assert_clean_exit(status);
    assert_eq!(m.answer(), json!({"event": "value", "key": "nothing", "value": null}));
    let ans = m.answer();
    expect_error(&m, &ans, "bogus");
    assert!(m.answers.is_empty(), "{:?}", m.answers);
}

#[test]
fn invalid_utf8_line_is_an_error_not_a_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = NodeProc::spawn("N", &tmp.path().join("n"), &[], None);
    n.send_bytes(b"put k \xff\xfe bytes\n");
    let ans = n.answer();
    expect_error(&n, &ans, "put with invalid UTF-8");
    let ans = n.request("put k fine");
    n.check_put(&ans, "k", "fine");
    assert_eq!(n.dump()["entries"], json!({"k": "fine"}));
    n.send("quit");
    let status = n.wait_exit();
    n.assert_clean_exit(status);
}

#[test]
fn restart_after_clean_quit_keeps_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("n");
    let mut n = NodeProc::spawn("N1", &data, &[], None);
    let peer_id = n.peer_id.clone();
    let ans = n.request("put title Groceries");
    let (actor, _) = n.check_put(&ans, "title", "Groceries");
    let ans = n.request("put note buy milk");
    assert_eq!(n.check_put(&ans, "note", "buy milk"), (actor.clone(), 2));
    let ans = n.request("put gone soon");
    assert_eq!(n.check_put(&ans, "gone", "soon"), (actor.clone(), 3));
    let ans = n.request("del gone");
    assert_eq!(ans, json!({"event": "ok", "cmd": "del", "key": "gone", "actor": &actor, "seq": 4}));
    let before = n.dump();
    assert_eq!(before["entries"], json!({"title": "Groceries", "note": "buy milk"}));
    assert_eq!(before["clock"], json!({ &actor: 4 }));
    n.send("quit");
    let status = n.wait_exit();
    n.assert_clean_exit(status);
    drop(n);

    // Same identity, same document, same actor; sequence numbers continue.
    let mut n = NodeProc::spawn("N2", &data, &[], None);
    assert_eq!(n.peer_id, peer_id, "the identity must persist");
    let after = n.dump();
    assert_eq!(after["entries"], before["entries"]);
    assert_eq!(after["clock"], before["clock"]);
    let ans = n.request("put title Shopping");
    assert_eq!(n.check_put(&ans, "title", "Shopping"), (actor.clone(), 5));
    // A put followed at once by end of input is still carried out,
    // acknowledged and durable before the node exits.
    n.send("put last word");
    drop(n.stdin.take());
    let status = n.wait_exit();
    n.assert_clean_exit(status);
    let ans = n.answer();
    assert_eq!(n.check_put(&ans, "last", "word"), (actor.clone(), 6));
    drop(n);

    let mut n = NodeProc::spawn("N3", &data, &[], None);
    assert_eq!(n.peer_id, peer_id);
    let d = n.dump();
    assert_eq!(d["entries"], json!({"title": "Shopping", "note": "buy milk", "last": "word"}));
    assert_eq!(d["clock"], json!({ &actor: 6 }));
    drop(n.stdin.take());
    let status = n.wait_exit();
    n.assert_clean_exit(status);
}

fn run_node(args: &[&str]) -> Output {
    Command::new(EXE).arg("node").args(args).stdin(Stdio::null()).output().expect("run walrus node")
}

/// Checks a start-up failure: a non-zero exit code (no signal), nothing on
/// standard output, no panic; returns standard error.
fn fails_to_start(args: &[&str], code: i32) -> String {
    let out = run_node(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "walrus node {args:?}: {:?}\n{err}", out.status);
    assert!(out.stdout.is_empty(), "walrus node {args:?} printed {:?}", String::from_utf8_lossy(&out.stdout));
    assert!(!err.contains("panicked"), "walrus node {args:?}: {err}");
    assert!(!err.trim().is_empty(), "walrus node {args:?}: no message");
    err
}

#[test]
fn bad_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data_s = data.to_str().expect("UTF-8 temp path");

    let err = fails_to_start(&[], 2);
    assert!(err.contains("--data") && err.contains("Usage"), "{err}");

    let long_name = "n".repeat(129);
    for name in ["../x", "a/b", ".hidden", "", "sp ace", long_name.as_str()] {
        let err = fails_to_start(&["--data", data_s, "--doc", name], 1);
        assert!(err.contains("document name"), "--doc {name:?}: {err}");
        assert!(err.contains(name), "--doc {name:?}: the message must name it: {err}");
    }
    assert!(!tmp.path().join("x").exists() && !data.join("x").exists(), "--doc ../x wrote outside the data dir");

    let err = fails_to_start(&["--data", data_s, "--listen", "/ip4/127.0.0.1/udp/1"], 1);
    assert!(err.contains("/ip4/127.0.0.1/udp/1"), "the message must name the address: {err}");

    let err = fails_to_start(&["--data", data_s, "--listen", "not-a-multiaddr"], 2);
    assert!(err.contains("--listen"), "{err}");
    let err = fails_to_start(&["--data", data_s, "--peer", "127.0.0.1:4001"], 2);
    assert!(err.contains("--peer"), "{err}");
    let err = fails_to_start(&["--data", data_s, "--sync-interval-ms", "soon"], 2);
    assert!(err.contains("--sync-interval-ms"), "{err}");

    let file = tmp.path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = fails_to_start(&["--data", file.to_str().unwrap()], 1);
    assert!(err.contains(file.to_str().unwrap()), "the message must name the path: {err}");
}

#[test]
fn second_node_on_the_same_data_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("n");
    let data_s = data.to_str().expect("UTF-8 temp path");
    let mut first = NodeProc::spawn("first", &data, &["--doc", "one"], None);
    let ans = first.request("put k v");
    let (actor, _) = first.check_put(&ans, "k", "v");
    // Another document on the same data directory would share the peer id:
    // refused, naming the directory and the process holding it.
    for doc in ["two", "one"] {
        let err = fails_to_start(&["--data", data_s, "--doc", doc], 1);
        assert!(err.contains("locked by another node"), "{err}");
        assert!(err.contains(data_s), "the message must name the directory: {err}");
        assert!(err.contains(&format!("process {}", first.child.id())), "the message must name the holder: {err}");
    }
    assert!(!data.join("docs").join("two").exists(), "the refused node touched the data directory");
    // The first node is unharmed.
    assert_eq!(first.dump(), json!({"event": "dump", "entries": {"k": "v"}, "clock": { &actor: 1 }, "actor": actor}));
    let ans = first.request("put k2 v2");
    first.check_put(&ans, "k2", "v2");
    drop(first.stdin.take());
    let status = first.wait_exit();
    first.assert_clean_exit(status);
    // Released at exit: the directory can be used again.
    let mut again = NodeProc::spawn("again", &data, &["--doc", "two"], None);
    assert_eq!(again.peer_id, first.peer_id, "the identity persists");
    drop(again.stdin.take());
    let status = again.wait_exit();
    again.assert_clean_exit(status);
}

/// Nodes started all at once on one empty data directory: exactly one
/// runs; every other one fails with the lock error (never a half-created
/// identity or any other file error).
#[test]
fn nodes_started_at_once_on_an_empty_directory() {
    const NODES: usize = 5;
    for round in 0..3 {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("fresh");
        let mut children: Vec<Child> = (0..NODES)
            .map(|i| {
                Command::new(EXE)
                    .arg("node")
                    .arg("--data")
                    .arg(&data)
                    .args(["--doc", &format!("doc{i}")])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn walrus node")
            })
            .collect();
        // Each child's first line, or None if it exited without one.
        let (tx, firsts) = mpsc::channel();
        for (i, child) in children.iter_mut().enumerate() {
            let stdout = child.stdout.take().expect("piped stdout");
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stdout);
                let mut line = String::new();
                let first = match reader.read_line(&mut line) {
                    Ok(1..) => Some(line),
                    _ => None,
                };
                let _ = tx.send((i, first, reader));
            });
        }
        let mut running = Vec::new();
        for _ in 0..NODES {
            let (i, first, reader) = firsts.recv_timeout(PATIENCE).expect("every node starts or exits");
            match first {
                Some(line) => {
                    let v: Value = serde_json::from_str(&line).expect("a JSON line");
                    assert_eq!(v["event"], "listening", "round {round}, node {i}: {line}");
                    running.push((i, reader));
                }
                None => {
                    let mut err = String::new();
                    let mut pipe = children[i].stderr.take().expect("piped stderr");
                    pipe.read_to_string(&mut err).expect("read stderr");
                    let status = children[i].wait().expect("wait for walrus node");
                    assert_eq!(status.code(), Some(1), "round {round}, node {i}: {status:?}\n{err}");
                    assert!(err.contains("locked by another node"), "round {round}, node {i}: {err}");
                    assert!(!err.contains("panicked"), "round {round}, node {i}: {err}");
                }
            }
        }
        assert_eq!(running.len(), 1, "round {round}: exactly one node runs");
        let (i, mut reader) = running.pop().expect("one");
        let stdin = children[i].stdin.as_mut().expect("piped stdin");
        stdin.write_all(b"put k v\nquit\n").expect("write to the running node");
        let answer = loop {
            let mut line = String::new();
            assert!(reader.read_line(&mut line).expect("read the answer") > 0, "round {round}: no answer to put");
            let v: Value = serde_json::from_str(&line).expect("a JSON line");
            if v["event"] == "ok" || v["event"] == "error" {
                break v;
            }
        };
        assert_eq!((&answer["cmd"], &answer["key"]), (&json!("put"), &json!("k")), "round {round}: {answer}");
        drop(children[i].stdin.take());
        let status = children[i].wait().expect("wait for the running node");
        assert_eq!(status.code(), Some(0), "round {round}");
        // One identity, nothing half-made left behind.
        let mut names: Vec<String> =
            std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["LOCK", "docs", "identity.key"], "round {round}");
    }
}

#[test]
fn allow_list_and_private_network() {
    let tmp = tempfile::tempdir().unwrap();
    let psk = tmp.path().join("swarm.key");
    std::fs::write(&psk, format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", "5a".repeat(32))).unwrap();
    let psk_s = psk.to_str().expect("UTF-8 temp path");
    let private = ["--psk-file", psk_s];
    let mut b = NodeProc::spawn("b", &tmp.path().join("b"), &private, None);
    let mut c = NodeProc::spawn("c", &tmp.path().join("c"), &private, None);
    let b_id = b.peer_id.clone();

    // A configured peer outside the allow-list is refused at start.
    let a_data = tmp.path().join("a");
    let a_s = a_data.to_str().expect("UTF-8 temp path");
    let err = fails_to_start(&["--data", a_s, "--allow", &b_id, "--peer", &c.addr], 1);
    assert!(err.contains("allow-list") && err.contains(&c.addr), "{err}");

    let mut a = NodeProc::spawn("a", &a_data, &["--allow", &b_id, "--psk-file", psk_s], None);
    let a_id = a.peer_id.clone();
    // C, not on A's list, is disconnected as soon as A knows who it is.
    let ans = c.request(&format!("connect {}", a.addr));
    assert_eq!(ans["event"], "ok", "{ans}");
    c.wait_event(0, "peer_disconnected from a", |v| v["event"] == "peer_disconnected" && v["peer"] == a_id);
    // B, on the list and holding the same key, connects and replicates.
    let ans = b.request(&format!("connect {}", a.addr));
    assert_eq!(ans["event"], "ok", "{ans}");
    a.wait_connected(&[&b_id]);
    let ans = b.request("put k from-b");
    b.check_put(&ans, "k", "from-b");
    a.wait_event(0, "b's change", |v| v["event"] == "remote_change" && v["key"] == "k" && v["value"] == "from-b");
    let peers = a.request("peers");
    let ids: Vec<&str> = peers["peers"].as_array().expect("peers").iter().filter_map(|p| p["peer"].as_str()).collect();
    assert_eq!(ids, vec![b_id.as_str()], "{peers}");
    let c_id = c.peer_id.clone();
    assert!(
        !a.events.iter().any(|v| v["event"] == "peer_connected" && v["peer"] == c_id.as_str()),
        "A reported C\n{}",
        a.context()
    );
    for n in [&mut a, &mut b, &mut c] {
        drop(n.stdin.take());
        let status = n.wait_exit();
        n.assert_clean_exit(status);
    }
}

#[test]
fn bad_allow_and_psk_file_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data_s = data.to_str().expect("UTF-8 temp path");

    let err = fails_to_start(&["--data", data_s, "--allow", "not-a-peer-id"], 2);
    assert!(err.contains("--allow") && err.contains("not-a-peer-id"), "{err}");

    let missing = tmp.path().join("missing.key");
    let err = fails_to_start(&["--data", data_s, "--psk-file", missing.to_str().unwrap()], 1);
    assert!(err.contains(missing.to_str().unwrap()), "the message must name the file: {err}");

    let bad = tmp.path().join("bad.key");
    std::fs::write(&bad, "/key/swarm/psk/1.0.0/\n/base16/\nnot hex\n").unwrap();
    let err = fails_to_start(&["--data", data_s, "--psk-file", bad.to_str().unwrap()], 1);
    assert!(err.contains(bad.to_str().unwrap()) && err.contains("64 hex digits"), "{err}");
}

#[test]
fn writer_allow_list() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_data, b_data) = (tmp.path().join("a"), tmp.path().join("b"));
    // First runs, to learn each node's actor id.
    let mut actors = Vec::new();
    for (name, data) in [("a", &a_data), ("b", &b_data)] {
        let mut n = NodeProc::spawn(name, data, &[], None);
        let actor = n.dump()["actor"].as_str().expect("dump names the actor").to_string();
        assert_eq!(actor.len(), 64, "{actor}");
        drop(n.stdin.take());
        let status = n.wait_exit();
        n.assert_clean_exit(status);
        actors.push(actor);
    }
    // Only A may write, on both nodes.
    let only_a = ["--writer", actors[0].as_str()];
    let mut a = NodeProc::spawn("a", &a_data, &only_a, None);
    let mut args = only_a.to_vec();
    args.extend(["--peer", a.addr.as_str()]);
    let mut b = NodeProc::spawn("b", &b_data, &args, None);
    a.wait_connected(&[&b.peer_id.clone()]);
    let ans = b.request("put k from-b");
    expect_error(&b, &ans, "put by a non-writer");
    assert!(ans["message"].as_str().is_some_and(|m| m.contains("may not write")), "{ans}");
    let ans = a.request("put k from-a");
    a.check_put(&ans, "k", "from-a");
    b.wait_event(0, "a's change", |v| v["event"] == "remote_change" && v["key"] == "k" && v["value"] == "from-a");
    let err = fails_to_start(&["--data", tmp.path().join("c").to_str().unwrap(), "--writer", "xyz"], 2);
    assert!(err.contains("--writer"), "{err}");
    for n in [&mut a, &mut b] {
        drop(n.stdin.take());
        let status = n.wait_exit();
        n.assert_clean_exit(status);
    }
}

/// A node started on a copy of another's data (a restored backup) writes
/// its documents under new actors, and says so.
#[test]
fn a_node_on_a_restored_copy_retires_its_actors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("n");
    let mut n = NodeProc::spawn("N1", &data, &[], None);
    let ans = n.request("put title Groceries");
    let (actor, _) = n.check_put(&ans, "title", "Groceries");
    n.send("quit");
    let status = n.wait_exit();
    n.assert_clean_exit(status);
    drop(n);

    let copy = tmp.path().join("restored");
    copy_tree(&data, &copy);
    let mut n = NodeProc::spawn("N2", &copy, &[], None);
    let retired = n.wait_event(0, "actor_retired", |v| v["event"] == "actor_retired");
    assert_eq!(retired["old"], json!(actor));
    assert_eq!(retired["doc"], json!("default"));
    let new = retired["actor"].as_str().unwrap().to_string();
    assert_ne!(new, actor);
    let ans = n.request("put title Shopping");
    assert_eq!(n.check_put(&ans, "title", "Shopping"), (new.clone(), 1));
    let d = n.dump();
    assert_eq!(d["actor"], json!(new));
    assert_eq!(d["clock"], json!({ &actor: 1, &new: 1 }));
    drop(n.stdin.take());
    let status = n.wait_exit();
    n.assert_clean_exit(status);
}
