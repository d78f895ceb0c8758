//! Applying a scenario's faults: resolving targets, crashes (now, inside a write, after an operation, correlated), network and disk faults, failpoints.

use super::*;

/// Which servers a fault's target names, resolved now.
pub(super) async fn resolve(target: &str, servers: &BTreeMap<u64, Server>, rng: &mut ChaCha8Rng) -> Vec<u64> {
    let up: Vec<u64> = servers.iter().filter(|(_, s)| s.up).map(|(id, _)| *id).collect();
    let leader = find_leader(&up).await;
    match target {
        "all" => servers.keys().copied().collect(),
        "leader" => leader.into_iter().collect(),
        "follower" => {
            let f: Vec<u64> = up.iter().copied().filter(|id| Some(*id) != leader).collect();
            f.get(rng.random_range(0..f.len().max(1))).copied().into_iter().collect()
        }
        "any" => up.get(rng.random_range(0..up.len().max(1))).copied().into_iter().collect(),
        // A majority of all servers, the ones up first (a correlated fault hits machines, not roles).
        "quorum" => {
            let mut ids = shuffled(&up, rng);
            let down: Vec<u64> = servers.keys().copied().filter(|id| !up.contains(id)).collect();
            ids.extend(shuffled(&down, rng));
            ids.truncate(servers.len() / 2 + 1);
            ids.sort_unstable();
            ids
        }
        "pair" => {
            let mut ids = shuffled(&up, rng);
            ids.truncate(2);
            ids.sort_unstable();
            ids
        }
        other => other
            .strip_prefix("node:")
            .and_then(|n| n.parse().ok())
            .filter(|id| servers.contains_key(id))
            .into_iter()
            .collect(),
    }
}

/// Servers `others` crash at the same instant as the next injected crash of `s`.
pub(super) fn crash_together(s: &Server, others: Vec<(u64, SimFs)>, w: &Shared, id: u64) {
    if others.is_empty() {
        return;
    }
    let names: Vec<u64> = others.iter().map(|(o, _)| *o).collect();
    event(w, format!("server {id}: servers {names:?} will crash with it"));
    s.disk.crash_together_with(others.into_iter().map(|(_, d)| d).collect());
}

/// `ids` in a seeded random order.
pub(super) fn shuffled(ids: &[u64], rng: &mut ChaCha8Rng) -> Vec<u64> {
    let mut ids = ids.to_vec();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.random_range(0..=i));
    }
    ids
}

/// The disks of the servers a correlated crash of `id` takes along (`with`): enough others for a
/// majority, or all others.
pub(super) fn companions(
    with: Option<&str>,
    id: u64,
    servers: &BTreeMap<u64, Server>,
    rng: &mut ChaCha8Rng,
) -> Vec<(u64, SimFs)> {
    let others: Vec<u64> = servers.keys().copied().filter(|&o| o != id).collect();
    let n = match with {
        Some("quorum") => servers.len() / 2,
        Some("all") => others.len(),
        _ => 0,
    };
    let mut chosen = shuffled(&others, rng);
    chosen.truncate(n);
    chosen.sort_unstable();
    chosen.into_iter().filter_map(|o| servers.get(&o).map(|s| (o, s.disk.clone()))).collect()
}

/// The operation kind an `after_op` names (`None`: any).
pub(super) fn op_kind(name: &str) -> Option<OpKind> {
    match name {
        "write" => Some(OpKind::Write),
        "sync" => Some(OpKind::Sync),
        "sync_dir" => Some(OpKind::SyncDir),
        "rename" => Some(OpKind::Rename),
        "remove" => Some(OpKind::Remove),
        "set_len" => Some(OpKind::SetLen),
        "create" => Some(OpKind::Create),
        _ => None,
    }
}

/// Run `f` after `after` of simulated time (a fault healing itself).
pub(super) fn later(after: Duration, f: impl FnOnce() + Send + 'static) {
    madsim::task::spawn(async move {
        madsim::time::sleep(after).await;
        f();
    });
}

/// How long the harness keeps sending a membership change that finds no leader, or another change
/// under way.
const MEMBERSHIP_RETRY_MS: u64 = 8_000;

/// Send `CLUSTER <args>` to the leader until it is answered: acknowledged (the membership it left is
/// recorded), refused for good, or out of time. An answer that leaves the outcome open (a timeout,
/// a leadership change) marks the membership as unknown: the change may still take effect.
async fn change_membership(args: Vec<String>, servers: Vec<u64>, w: Shared) {
    let what = args.join(" ");
    let deadline = now_ms() + MEMBERSHIP_RETRY_MS;
    let mut full: Vec<&[u8]> = vec![b"CLUSTER"];
    full.extend(args.iter().map(|a| a.as_bytes()));
    let outcome = loop {
        if let Some(l) = find_leader(&servers).await {
            match call(SocketAddr::new(server_ip(l), RESP_PORT), &full, Duration::from_secs(12)).await {
                Ok(Reply::Array(Some(lines))) => break Ok(lines),
                Ok(Reply::Error(e))
                    if e.starts_with("TRYAGAIN")
                        || e.starts_with("NOTLEADER")
                        || e.contains("still taking effect")
                        || e.contains("leaving a joint")
                        || e.contains("not caught up")
                        || e.contains("is not the leader") => {}
                Ok(Reply::Error(e)) if e.starts_with("ERR") => break Err((e, false)),
                Ok(other) => break Err((format!("{other:?}"), true)),
                Err(_) => break Err(("no answer".into(), true)),
            }
        }
        if now_ms() > deadline {
            break Err(("no leader took it in time".into(), false));
        }
        madsim::time::sleep(Duration::from_millis(200)).await;
    };
    let mut world = world(&w);
    world.membership_sending -= 1;
    match outcome {
        Ok(lines) => {
            let (mut voters, mut learners) = (Vec::new(), Vec::new());
            for line in &lines {
                let text = match line {
                    Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
                    _ => continue,
                };
                let mut parts = text.split(' ');
                let (Some(id), Some(role)) = (parts.next().and_then(|i| i.parse::<u64>().ok()), parts.next())
                else {
                    continue;
                };
                match role {
                    "learner" => learners.push(id),
                    _ => voters.push(id),
                }
            }
            world
                .trace
                .push(format!("{:>8} CLUSTER {what}: voters {voters:?}, learners {learners:?}", now_ms()));
            world.membership_acked = Some((voters, learners));
        }
        Err((why, unknown)) => {
            world.trace.push(format!("{:>8} CLUSTER {what} not acknowledged: {why}", now_ms()));
            world.membership_unknown |= unknown;
        }
    }
}

/// The servers' madsim node ids, for network faults.
pub(super) fn node_ids(servers: &BTreeMap<u64, Server>) -> BTreeMap<u64, madsim::task::NodeId> {
    servers.iter().map(|(id, s)| (*id, s.handle.id())).collect()
}

pub(super) async fn apply_fault(
    f: &Fault,
    servers: &mut BTreeMap<u64, Server>,
    rng: &mut ChaCha8Rng,
    w: &Shared,
) -> Result<(), Failure> {
    let handle = Handle::current();
    let targets = resolve(&f.target, servers, rng).await;
    let ids = node_ids(servers);
    let bad_scenario = |explanation: String| Failure { invariant: "scenario", explanation };
    for id in targets {
        // Drawn only for a correlated fault, so other scenarios' streams stay as they were.
        let others =
            if f.with.is_some() { companions(f.with.as_deref(), id, servers, rng) } else { Vec::new() };
        let Some(s) = servers.get_mut(&id) else { continue };
        world(w).faults.push(format!("{:?}@{}:{}", f.action, f.at_ms, id));
        let heal_after = f.for_ms.map(Duration::from_millis);
        match f.action {
            Action::Kill | Action::PowerLoss => {
                let kind =
                    if f.action == Action::Kill { CrashKind::ProcessKill } else { CrashKind::PowerLoss };
                if !s.up {
                    continue;
                }
                match (&f.mid_write, &f.after_op) {
                    // Land inside the next write to a matching file; the node dies of it.
                    (Some(pattern), _) => {
                        torn_tail_preempted(s, w, id);
                        s.disk.arm_crash_on_write(s.disk.ops_done(), pattern, kind, TornWrite::Random);
                        event(w, format!("server {id}: crash armed inside the next write to {pattern}"));
                    }
                    // Land right after the nth matching operation completes, before anything else.
                    (None, Some(op)) => {
                        torn_tail_preempted(s, w, id);
                        let (path, nth) = (f.path.as_deref().unwrap_or("*"), f.nth.unwrap_or(1));
                        s.disk.arm_crash_after(s.disk.ops_done(), op_kind(op), path, nth, kind);
                        event(w, format!("server {id}: crash armed right after {op} #{nth} on {path}"));
                    }
                    (None, None) => kill(&handle, s, kind, w, id),
                }
                s.held_down = true;
                if f.mid_write.is_some() || f.after_op.is_some() {
                    crash_together(s, others, w, id);
                }
            }
            Action::Restart => {
                if !s.up {
                    restart(&handle, s, w, id);
                }
            }
            Action::TornTail => {
                // A torn tail is a write interrupted by a crash: OOM-kill the server inside its next
                // raft WAL append (never-fsynced, never-acknowledged bytes); the supervisor restarts
                // it, and start-up repairs the tail.
                if s.up {
                    s.disk.arm_crash_on_write(
                        s.disk.ops_done(),
                        "*/raft/*.wal",
                        CrashKind::ProcessKill,
                        TornWrite::Partial,
                    );
                    s.torn_tail_armed = true;
                    event(w, format!("server {id}: OOM-kill armed inside the next raft WAL append"));
                    if let Some(op) = f.after_op.as_deref() {
                        let kind = if f.effect.as_deref() == Some("power_loss") {
                            CrashKind::PowerLoss
                        } else {
                            CrashKind::ProcessKill
                        };
                        let path = f.path.clone().unwrap_or_else(|| "*/raft*".into());
                        s.crash_in_repair = Some((op_kind(op), path, f.nth.unwrap_or(1), kind));
                    }
                }
            }
            Action::LoseAckedTail => {
                // Not a torn write: records the server fsynced and acknowledged vanish from the end
                // of its log while it is down (a zeroed sector, a lost write-back). It must recover
                // them from its peers before it votes again.
                if s.up {
                    kill(&handle, s, CrashKind::ProcessKill, w, id);
                }
                if let Some(seg) = last_segment(&s.disk) {
                    let len = s.disk.metadata(&seg).map(|m| m.len).unwrap_or(0);
                    let cut = len.saturating_sub(rng.random_range(1..=16u64));
                    if let Ok(mut file) = s.disk.open(&seg, OpenOptions::read_write()) {
                        let _ = file.set_len(cut).and_then(|_| file.sync());
                    }
                    s.log_damaged = true;
                    event(w, format!("server {id}: acknowledged WAL tail cut to {cut} of {len} bytes"));
                }
                restart(&handle, s, w, id);
            }
            Action::BitFlip => {
                if s.up {
                    kill(&handle, s, CrashKind::ProcessKill, w, id);
                }
                // A flipped bit in an acknowledged WAL record: the node cuts its log there and
                // recovers the rest from its peers (D5). In a snapshot body: it must refuse to start
                // with a typed error (D8), and the cluster go on without it.
                let file = match f.at.as_deref() {
                    Some("snapshot") => {
                        newest_file(&s.disk, &DataLayout::new(Path::new(DATA)).snapshots, ".snap")
                    }
                    _ => last_segment(&s.disk),
                };
                match file {
                    Some(file) => {
                        let len = s.disk.metadata(&file).map(|m| m.len).unwrap_or(0);
                        let offset = len / 2;
                        let _ = s.disk.flip_bit(&file, offset, rng.random_range(0..8));
                        if f.at.as_deref() == Some("snapshot") {
                            s.corrupted = true;
                            let started = world(w).started.get(&id).copied().unwrap_or(0);
                            s.corrupt_snapshot_at_start = Some(started);
                        } else {
                            // A damaged acknowledged WAL record: the server recovers it from peers.
                            s.log_damaged = true;
                            s.wal_flip_unseen =
                                Some((now_ms(), format!("a bit flipped at {offset} of {}", file.display())));
                        }
                        event(w, format!("server {id}: bit flipped at {offset} of {}", file.display()));
                    }
                    None => event(w, format!("server {id}: no file to flip a bit in")),
                }
                restart(&handle, s, w, id);
            }
            Action::Partition => {
                // Cut this server off from the other servers, both ways; clients still reach it (so
                // they meet a minority that must not answer as if it were the cluster).
                let net = madsim::net::NetSim::current();
                let me = ids[&id];
                let others: Vec<_> = ids.iter().filter(|(o, _)| **o != id).map(|(_, n)| *n).collect();
                for &o in &others {
                    net.clog_link(me, o);
                    net.clog_link(o, me);
                }
                event(
                    w,
                    format!(
                        "server {id} partitioned from the other servers for {} ms",
                        f.for_ms.unwrap_or(0)
                    ),
                );
                let w2 = w.clone();
                later(heal_after.unwrap_or_default(), move || {
                    let net = madsim::net::NetSim::current();
                    for &o in &others {
                        net.unclog_link(me, o);
                        net.unclog_link(o, me);
                    }
                    event(&w2, format!("server {id} partition healed"));
                });
            }
            Action::Clog => {
                // Nothing in or out, clients included: a hung host or a dead switch port.
                madsim::net::NetSim::current().clog_node(ids[&id]);
                event(w, format!("server {id} clogged for {} ms", f.for_ms.unwrap_or(0)));
                let (node, w2) = (ids[&id], w.clone());
                later(heal_after.unwrap_or_default(), move || {
                    madsim::net::NetSim::current().unclog_node(node);
                    event(&w2, format!("server {id} unclogged"));
                });
            }
            Action::Eio => {
                let op = match f.op.as_deref() {
                    Some("read") => OpKind::Read,
                    Some(other) => op_kind(other).unwrap_or(OpKind::Sync),
                    None => OpKind::Sync,
                };
                let pattern = f.at.clone().unwrap_or_else(|| "*".into());
                let mut rule = FaultRule::always(FaultEffect::Eio, &[op])
                    .on_path(&pattern)
                    .map_err(|e| bad_scenario(format!("eio at {pattern:?}: {e}")))?;
                if let Some(n) = f.times {
                    rule = rule.max_fires(n);
                }
                s.disk.add_rule(rule).map_err(|e| bad_scenario(format!("eio: {e}")))?;
                event(w, format!("server {id}: EIO on {op:?} of {pattern}"));
                if let Some(after) = heal_after {
                    let (disk, w2) = (s.disk.clone(), w.clone());
                    later(after, move || {
                        disk.clear_rules();
                        event(&w2, format!("server {id}: EIO healed"));
                    });
                }
            }
            Action::BitRot => {
                let op = if f.op.as_deref() == Some("read") { OpKind::Read } else { OpKind::Write };
                let pattern = "*/raft/*.wal";
                // One matching operation in eight, so the flip lands somewhere in the run's traffic
                // rather than on the very next write.
                let odds =
                    durakv_faults::Ratio::new(1, 8).map_err(|e| bad_scenario(format!("bit_rot: {e}")))?;
                let rule = FaultRule::always(FaultEffect::BitFlip, &[op])
                    .on_path(pattern)
                    .map_err(|e| bad_scenario(format!("bit_rot: {e}")))?
                    .with_probability(odds)
                    .max_fires(f.times.unwrap_or(1));
                s.disk.add_rule(rule).map_err(|e| bad_scenario(format!("bit_rot: {e}")))?;
                // Acknowledged entries may be damaged: while the server recovers them from its
                // peers, its log may be behind what it promised.
                s.wal_rot = true;
                event(w, format!("server {id}: bit rot on {op:?} of {pattern}"));
            }
            Action::Enospc => {
                let capacity = s.disk.used_bytes() + f.free_bytes.unwrap_or(0);
                s.disk.set_capacity(Some(capacity));
                event(w, format!("server {id}: disk full at {capacity} bytes"));
                if let Some(after) = heal_after {
                    let (disk, w2) = (s.disk.clone(), w.clone());
                    later(after, move || {
                        disk.set_capacity(None);
                        event(&w2, format!("server {id}: disk space freed"));
                    });
                }
            }
            Action::AddLearner | Action::Promote | Action::Remove => {
                let id_text = id.to_string();
                let addr = |port| SocketAddr::new(server_ip(id), port).to_string();
                let mut args: Vec<String> = match f.action {
                    Action::AddLearner => {
                        vec!["ADDLEARNER".into(), id_text, addr(PEER_PORT), addr(RESP_PORT)]
                    }
                    Action::Promote => vec!["PROMOTE".into(), id_text],
                    _ => vec!["REMOVE".into(), id_text],
                };
                if let Some(old) = f.replacing {
                    args.extend(["REPLACING".into(), old.to_string()]);
                }
                let up: Vec<u64> = servers.keys().copied().collect();
                world(w).membership_sending += 1;
                madsim::task::spawn(change_membership(args, up, w.clone()));
            }
            Action::ClockSkew => {
                let offset = f.offset_ms.unwrap_or(0);
                world(w).clocks.entry(id).or_default().set_offset_ms(offset);
                event(w, format!("server {id}: wall clock set {offset} ms off true time"));
            }
            Action::CrashLoop => {
                let kind = if f.effect.as_deref() == Some("power_loss") {
                    CrashKind::PowerLoss
                } else {
                    CrashKind::ProcessKill
                };
                let until_ms = now_ms() + f.for_ms.unwrap_or(0);
                s.crash_loop = Some(CrashLoop { until_ms, kind, next_ms: 0 });
                event(w, format!("server {id}: crash loop ({kind:?}) until {until_ms} ms"));
            }
            Action::ApplyFailure | Action::Failpoint => {
                let (name, effect) = match f.action {
                    Action::ApplyFailure => ("fsm.apply", "error"),
                    _ => (f.at.as_deref().unwrap_or(""), f.effect.as_deref().unwrap_or("")),
                };
                let stall = Duration::from_millis(f.stall_ms.unwrap_or(0));
                let (action, default_times) = match effect {
                    "error" => (FailAction::Error, Some(1)),
                    "kill" => (FailAction::Kill(CrashKind::ProcessKill), Some(1)),
                    "power_loss" => (FailAction::Kill(CrashKind::PowerLoss), Some(1)),
                    "kill_after" => (FailAction::KillAfter(CrashKind::ProcessKill), Some(1)),
                    "power_loss_after" => (FailAction::KillAfter(CrashKind::PowerLoss), Some(1)),
                    "pause" => (FailAction::Stall(stall), Some(1)),
                    "delay" => (FailAction::Stall(stall), None),
                    other => return Err(bad_scenario(format!("failpoint effect {other:?}"))),
                };
                let name = name.to_string();
                crash_together(s, others, w, id);
                s.disk.attach_failpoint(&name, action, f.times.or(default_times));
                event(w, format!("server {id}: failpoint {name} attached: {effect}"));
                if let Some(after) = heal_after {
                    let (disk, w2) = (s.disk.clone(), w.clone());
                    later(after, move || {
                        disk.detach_failpoint(&name);
                        event(&w2, format!("server {id}: failpoint {name} detached"));
                    });
                }
            }
        }
    }
    Ok(())
}
