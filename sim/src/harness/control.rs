//! The controller: the fault schedule, then heal, converge, the final power cycle, and the end-of-run checks.

use super::*;

/// A server whose snapshot body was corrupted on purpose must refuse to start (D9 verifies the file
/// even when it skips the restore): starting means corrupt state may be served or sent to peers.
pub(super) fn check_corruption_noticed(servers: &BTreeMap<u64, Server>, w: &Shared) -> Result<(), Failure> {
    for (id, s) in servers {
        let started = world(w).started.get(id).copied().unwrap_or(0);
        if s.corrupt_snapshot_at_start.is_some_and(|before| started > before) {
            return Err(Failure {
                invariant: "corruption_detection",
                explanation: format!(
                    "server {id} started from a snapshot file whose body no longer matches its CRC, without noticing"
                ),
            });
        }
    }
    Ok(())
}

/// After the faults: a write commits within the liveness bound, then every server that should be up
/// answers, and all have committed and applied the same index, and nothing moves any more.
pub(super) async fn converge(
    scenario: &Scenario,
    servers: &mut BTreeMap<u64, Server>,
    w: &Shared,
) -> Result<(), Failure> {
    let handle = Handle::current();
    // The leader's expiry sweep runs (the `expiry` check needs it) until the replicas must agree.
    world(w).sweeping.store(true, std::sync::atomic::Ordering::Relaxed);
    // Liveness: a write commits within the bound.
    let deadline = now_ms() + scenario.invariants.liveness_ms;
    loop {
        supervise(&handle, servers, w);
        check_corruption_noticed(servers, w)?;
        check_promises(servers, w)?;
        let up: Vec<u64> = servers.iter().filter(|(_, s)| s.up).map(|(id, _)| *id).collect();
        if let Some(l) = find_leader(&up).await {
            let addr = SocketAddr::new(server_ip(l), RESP_PORT);
            if let Ok(Reply::Simple(_)) =
                call(addr, &[b"SET", b"liveness", b"1"], Duration::from_secs(2)).await
            {
                break;
            }
        }
        if now_ms() > deadline {
            return Err(Failure {
                invariant: "liveness",
                explanation: format!(
                    "no write committed within {} ms after the faults ended",
                    scenario.invariants.liveness_ms
                ),
            });
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
    ran(w, "liveness");
    if scenario.workload.mix.ttl > 0 {
        check_expiry(scenario, servers, w).await?;
        ran(w, "expiry");
    }
    // From here the servers must come to agree and stay still until they are stopped: the sweep,
    // the one writer that acts on its own, must not propose a last entry one replica applies and
    // the others do not before the stop (found by the swarm: replicas one index apart).
    world(w).sweeping.store(false, std::sync::atomic::Ordering::Relaxed);
    // (After the sweep stopped: the harness's own requests must not change what the servers apply.)
    check_membership(servers, w).await?;
    // Every server restarts without an operator and applies up to the leader's commit index; only
    // a server whose disk was corrupted on purpose may stay down (refusing is correct there).
    let expected: Vec<u64> = servers
        .iter()
        .filter(|(_, s)| s.member && !(s.corrupted && s.refused.is_some()))
        .map(|(id, _)| *id)
        .collect();
    let mut views = BTreeMap::new();
    // Quiet means: every expected server answers, all have committed and applied the same index,
    // and nothing moved since the previous poll (an election's no-op entry can still commit after
    // the workload stops; the servers are stopped only once they agree and are still).
    let mut target = 0;
    let mut previous = BTreeMap::new();
    let deadline = now_ms() + scenario.invariants.liveness_ms;
    loop {
        supervise(&handle, servers, w);
        check_corruption_noticed(servers, w)?;
        check_promises(servers, w)?;
        let mut applied = BTreeMap::new();
        let mut commits = Vec::new();
        for &id in &expected {
            if servers[&id].up
                && let Some(i) = info(id).await
            {
                let commit = i.get("commit_index").and_then(|v| v.parse().ok()).unwrap_or(0);
                target = target.max(commit);
                commits.push(commit);
                applied.insert(id, i.get("applied_index").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0));
                let field = |name: &str| i.get(name).cloned().unwrap_or_default();
                views.insert(id, (field("voters"), field("learners")));
            }
        }
        let agreed = applied.len() == expected.len()
            && applied.values().all(|&a| a == target)
            && commits.iter().all(|&c| c == target);
        if agreed && applied == previous {
            break;
        }
        previous = applied.clone();
        if now_ms() > deadline {
            let down: Vec<String> = expected
                .iter()
                .filter(|id| !applied.contains_key(id))
                .map(|id| match &servers[id].refused {
                    Some((_, why)) => format!("server {id} refuses to start: {why}"),
                    None => format!("server {id} does not answer"),
                })
                .collect();
            return Err(Failure {
                invariant: "liveness",
                explanation: format!(
                    "within {} ms after the faults ended, servers did not all catch up to commit index {target}: applied {applied:?}{}{}",
                    scenario.invariants.liveness_ms,
                    if down.is_empty() { "" } else { "; " },
                    down.join("; ")
                ),
            });
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
    ran(w, "catch_up");
    // Every member that caught up sees the same membership.
    if views.values().any(|v| Some(v) != views.values().next()) {
        return Err(Failure {
            invariant: "membership",
            explanation: format!(
                "members that applied the same log see different memberships (voters, learners): {views:?}"
            ),
        });
    }
    Ok(())
}

/// The membership after the faults: wait for changes still being sent, ask the leader, and check
/// that the last acknowledged change's membership stands (unless a later change's outcome was left
/// unknown). Servers outside it (spares never added, removed ones) need not catch up.
async fn check_membership(servers: &mut BTreeMap<u64, Server>, w: &Shared) -> Result<(), Failure> {
    while world(w).membership_sending > 0 {
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
    let up: Vec<u64> = servers.iter().filter(|(_, s)| s.up).map(|(id, _)| *id).collect();
    let Some(leader) = find_leader(&up).await else { return Ok(()) };
    let Some(i) = info(leader).await else { return Ok(()) };
    let ids = |name: &str| -> Vec<u64> {
        i.get(name).map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect()).unwrap_or_default()
    };
    let (voters, learners, members) = (ids("voters"), ids("learners"), ids("members"));
    let (acked, unknown) = {
        let world = world(w);
        (world.membership_acked.clone(), world.membership_unknown)
    };
    if let Some((v, l)) = acked
        && !unknown
        && (v != voters || l != learners)
    {
        return Err(Failure {
            invariant: "membership",
            explanation: format!(
                "the last acknowledged membership change left voters {v:?} and learners {l:?}; the leader (server {leader}) has voters {voters:?} and learners {learners:?}"
            ),
        });
    }
    if !members.is_empty() {
        for (id, s) in servers.iter_mut() {
            s.member = members.contains(id);
        }
    }
    ran(w, "membership");
    Ok(())
}

/// How long after its deadline surely passed an expiring key may still be read: the leader's sweep
/// looks at least once a second, and its entry must commit.
const EXPIRY_GRACE_MS: u64 = 3000;

/// `expiry`: every key whose last write was an expiring one reads as gone (through the leader, a
/// linearizable read) by the time its deadline surely passed, plus [`EXPIRY_GRACE_MS`]. The cluster
/// is healed and has a leader when this runs.
async fn check_expiry(
    scenario: &Scenario,
    servers: &BTreeMap<u64, Server>,
    w: &Shared,
) -> Result<(), Failure> {
    // Which write was a key's last is known only once no client has one in flight (found by the
    // swarm: a SET answered after the check began looked like a value no write explains).
    let clients = scenario.workload.clients;
    let patience = now_ms() + 30_000;
    while world(w).clients_done < clients && now_ms() < patience {
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
    let due = crate::checkers::expiry_due(&world(w).history);
    for d in due {
        loop {
            let up: Vec<u64> = servers.iter().filter(|(_, s)| s.up).map(|(id, _)| *id).collect();
            let read = match find_leader(&up).await {
                Some(l) => {
                    call(SocketAddr::new(server_ip(l), RESP_PORT), &[b"GET", &d.key], Duration::from_secs(2))
                        .await
                        .ok()
                }
                None => None,
            };
            match read {
                Some(Reply::Bulk(None)) => break,
                Some(Reply::Bulk(Some(v))) if v != d.value => {
                    return Err(Failure {
                        invariant: "expiry",
                        explanation: format!(
                            "key {:?} reads {:?}, written by nothing after its last write ({:?}, expiring)",
                            String::from_utf8_lossy(&d.key),
                            String::from_utf8_lossy(&v),
                            String::from_utf8_lossy(&d.value)
                        ),
                    });
                }
                _ if now_ms() > d.gone_by + EXPIRY_GRACE_MS => {
                    return Err(Failure {
                        invariant: "expiry",
                        explanation: format!(
                            "key {:?} still holds {:?} at {} ms: its deadline surely passed at {} ms (by any \
                             server's clock), and the leader's sweep had {EXPIRY_GRACE_MS} ms more",
                            String::from_utf8_lossy(&d.key),
                            String::from_utf8_lossy(&d.value),
                            now_ms(),
                            d.gone_by
                        ),
                    });
                }
                _ => madsim::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    Ok(())
}

/// Apply the schedule, supervise, then heal and check. Returns the final applied index and digest.
pub(super) async fn control(
    scenario: &Scenario,
    seed: u64,
    servers: &mut BTreeMap<u64, Server>,
    w: &Shared,
) -> Result<(u64, u64), Failure> {
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, "faults"));
    let mut faults = scenario.faults.clone();
    faults.sort_by_key(|f| f.at_ms);
    let mut next = 0;
    let handle = Handle::current();
    while now_ms() < scenario.duration_ms {
        while next < faults.len() && faults[next].at_ms <= now_ms() {
            apply_fault(&faults[next], servers, &mut rng, w).await?;
            next += 1;
        }
        crash_loops(&handle, servers, &mut rng, w);
        supervise(&handle, servers, w);
        check_corruption_noticed(servers, w)?;
        check_promises(servers, w)?;
        madsim::time::sleep(Duration::from_millis(50)).await;
    }
    if scenario.invariants.stable_leader {
        check_stable_leader(w)?;
    }
    // Heal: the network, every disk fault; everything that is down starts (a server whose disk
    // was corrupted on purpose is expected to refuse, and stays down).
    event(w, "faults over: healing".into());
    let net = madsim::net::NetSim::current();
    let ids = node_ids(servers);
    for (&a, &na) in &ids {
        net.unclog_node(na);
        for (&b, &nb) in &ids {
            if a != b {
                net.unclog_link(na, nb);
            }
        }
    }
    for (id, s) in servers.iter_mut() {
        s.crash_loop = None;
        // The schedule is over: nothing holds a server down any more. A crash still armed fires as
        // its disk heals (found by fuzz, seed 301507 of a membership scenario: a server held down by
        // a crash armed for an operation it never made died at the heal and stayed down for good);
        // the supervisor restarts it like any other.
        s.held_down = false;
        torn_tail_preempted(s, w, *id);
        heal_disk(&s.disk);
        let refuses_as_expected = s.corrupted && s.refused.is_some();
        if !s.up && !refuses_as_expected {
            restart(&handle, s, w, *id);
        }
    }
    converge(scenario, servers, w).await?;
    // What the faults made fire, before the final power cycle adds its own crashes.
    let mut fired = Vec::new();
    for (id, s) in servers.iter() {
        for (name, n) in s.disk.failpoint_fires() {
            fired.push(format!("server {id}: failpoint {name} x{n}"));
        }
        for (path, n) in s.disk.coverage() {
            fired.push(format!("server {id}: {path} x{n}"));
        }
    }
    world(w).fired = fired;
    // The final power cycle (FoundationDB's restart tests): every machine loses power at once, all
    // restart and converge again, and only then is the state read. What was acknowledged must
    // survive the loss of every page cache, not just a process kill.
    if scenario.invariants.skip_final_power_cycle.is_none() {
        event(w, "final power cycle: every server loses power".into());
        for (id, s) in servers.iter_mut() {
            if s.up {
                kill(&handle, s, CrashKind::PowerLoss, w, *id);
            }
        }
        for (id, s) in servers.iter_mut() {
            let refuses_as_expected = s.corrupted && s.refused.is_some();
            if !s.up && !refuses_as_expected {
                restart(&handle, s, w, *id);
            }
        }
        converge(scenario, servers, w).await.map_err(|mut f| {
            f.explanation = format!("after the final power cycle: {}", f.explanation);
            f
        })?;
    }
    // Stop every server (a process kill keeps the page cache) and read its state machine directly.
    let mut replicas = Vec::new();
    let mut final_state = BTreeMap::new();
    check_promises(servers, w)?;
    for check in ["promises", "election_safety", "log_matching", "commit_monotonic", "corruption_detection"] {
        ran(w, check);
    }
    check_recoveries(servers, w)?;
    ran(w, "recovery");
    let layout = DataLayout::new(Path::new(DATA));
    for (id, s) in servers.iter_mut() {
        if !s.up || !s.member {
            continue;
        }
        kill(&handle, s, CrashKind::ProcessKill, w, *id);
        let fs: SharedFs = Arc::new(s.disk.clone());
        if scenario.invariants.file_hygiene {
            let (storage, _) =
                RaftStorage::open(fs.clone(), &layout.raft, WalOptions::default()).map_err(|e| Failure {
                    invariant: "file_hygiene",
                    explanation: format!("server {id}: raft log: {e}"),
                })?;
            let pointer = storage.snapshot_pointer();
            let token = (pointer.metadata.index > 0).then_some(pointer.token.as_slice());
            check_file_hygiene(*id, &*fs, &layout, token, runtime_options().keep_snapshots)
                .map_err(|e| Failure { invariant: "file_hygiene", explanation: e.to_string() })?;
        }
        let engine = SimEngine::open(fs, &DataLayout::new(Path::new(DATA)).fsm, SimEngineOptions::default())
            .map_err(|e| Failure { invariant: "convergence", explanation: format!("server {id}: {e}") })?;
        let kv = Kv::new(engine, FsmSync::Sync)
            .map_err(|e| Failure { invariant: "convergence", explanation: format!("server {id}: {e}") })?;
        let pairs = durakv::fsm::Engine::scan(kv.engine(), b"", None, usize::MAX)
            .map_err(|e| Failure { invariant: "convergence", explanation: format!("server {id}: {e}") })?;
        let digest = state_digest(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        replicas.push((*id, kv.applied_index(), digest));
        if scenario.invariants.file_hygiene {
            ran(w, "file_hygiene");
        }
        if final_state.is_empty() {
            // What a client would read: values without their stored header, keys whose deadline
            // the state machine's clock reached hidden.
            let (visible, _) = kv.scan_visible(b"", usize::MAX).map_err(|e| Failure {
                invariant: "convergence",
                explanation: format!("server {id}: {e}"),
            })?;
            final_state = visible.into_iter().collect();
        }
    }
    if scenario.invariants.convergence {
        check_convergence(&replicas).map_err(|d| Failure {
            invariant: "convergence",
            explanation: format!("replicas (id, applied index, digest) differ: {:?}", d.0),
        })?;
        ran(w, "convergence");
    }
    let read_on = replicas.first().map_or(0, |r| r.0);
    // A copy: the checkers below run while `ran` takes the world's lock.
    let history = world(w).history.clone();
    let on = |e: String| format!("{e} (the final value as server {read_on}'s state machine holds it)");
    if scenario.invariants.durability {
        check_durability(&history, &final_state)
            .map_err(|e| Failure { invariant: "durability", explanation: on(e.to_string()) })?;
        ran(w, "durability");
    }
    if scenario.invariants.durability || scenario.invariants.linearizability {
        check_lists(&history, &final_state, |k| special_key(k, b'l'))
            .map_err(|e| Failure { invariant: "list_append", explanation: on(e.to_string()) })?;
        check_counters(&history, &final_state, |k| special_key(k, b'c'))
            .map_err(|e| Failure { invariant: "counter", explanation: on(e.to_string()) })?;
        ran(w, "list_append");
        ran(w, "counter");
    }
    // The final state joins the history as one read per key, after every operation: the
    // linearizability check must explain it too, so an operation whose outcome the client never
    // learned is placed (or not) consistently with what survived, never excused.
    if !replicas.is_empty() {
        let end = now_ms();
        let mut history = world(w);
        let mut keys: std::collections::BTreeSet<Vec<u8>> =
            history.history.iter().flat_map(|o| o.effects.iter().map(|(k, _)| k.clone())).collect();
        keys.extend(final_state.keys().filter(|k| k.as_slice() != b"liveness").cloned());
        for key in keys {
            let value = final_state.get(&key).cloned();
            history.history.push(Operation {
                client: FINAL_READ_CLIENT,
                server: read_on,
                effects: vec![(key, RegisterOp::Read(value))],
                call: end,
                ret: end,
                outcome: Outcome::Ok,
            });
        }
    }
    let (applied, digest) = replicas.first().map_or((0, 0), |r| (r.1, r.2));
    Ok((applied, digest))
}

/// Every fault that damages a log proved it had its effect, and every recovery from peers ended:
/// a server that lost acknowledged records recorded the evidence in its hard-state file before the
/// repair; a torn-tail kill tore (or cleanly stopped) a WAL append; and no server is still waiting
/// for entries it lost once the cluster is quiet (a leader lacking them would be a lost write).
pub(super) fn check_recoveries(servers: &BTreeMap<u64, Server>, w: &Shared) -> Result<(), Failure> {
    let layout = DataLayout::new(Path::new(DATA));
    for (id, s) in servers {
        if s.corrupted && s.refused.is_some() {
            continue;
        }
        let path = layout.raft.join(durakv::hardstate::FILE_NAME);
        let state = durakv::io::read_file(&s.disk, &path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| durakv::hardstate::decode_file(&bytes))
            .map(|(_, st)| st)
            .map_err(|e| Failure {
                invariant: "recovery",
                explanation: format!("server {id}: hard-state file {}: {e}", path.display()),
            })?;
        if s.log_damaged && state.repair.is_none() {
            return Err(Failure {
                invariant: "fault_effect",
                explanation: format!(
                    "server {id}'s acknowledged WAL records were damaged but it recorded no repair evidence"
                ),
            });
        }
        // Still armed at the end: no multi-sector append came before the run ended (no chance, not
        // a failure). Fired without a partial tear: the fault did not do what it names.
        let fired = s.torn_tail_armed && !s.disk.is_armed();
        if fired && !s.disk.coverage().contains_key("crash.torn_write.partial") {
            return Err(Failure {
                invariant: "fault_effect",
                explanation: format!("server {id}: the torn-tail kill never tore a WAL append"),
            });
        }
        if state.recover_to > 0 {
            return Err(Failure {
                invariant: "recovery",
                explanation: format!(
                    "server {id} is still recovering entries up to index {} it lost ({}) after the cluster went quiet",
                    state.recover_to,
                    state.repair.map(|r| r.to_string()).unwrap_or_default()
                ),
            });
        }
        if let Some(r) = state.repair {
            event(w, format!("server {id}: recovered from peers after: {r}"));
        }
    }
    Ok(())
}

/// `stable_leader`: through the faults, the first leader keeps leading. In a scenario that neither
/// kills nor cuts anyone off, an election means a server missed the leader's heartbeats for an
/// election timeout: the leader's raft loop was held up (by a slow disk under a snapshot, say).
fn check_stable_leader(w: &Shared) -> Result<(), Failure> {
    let world = world(w);
    let mut terms = world.leaders.iter().map(|&(at, id, term)| (term, at, id)).collect::<Vec<_>>();
    terms.sort_unstable();
    match (terms.first(), terms.iter().find(|(t, _, _)| Some(*t) != terms.first().map(|f| f.0))) {
        (Some(&(first, since, leader)), Some(&(term, at, id))) => Err(Failure {
            invariant: "stable_leader",
            explanation: format!(
                "server {leader} led term {first} from {since} ms, but server {id} became leader of term {term} at {at} ms: \
                 an election in a run where nobody was cut off or killed (were heartbeats held up?)"
            ),
        }),
        _ => {
            drop(world);
            ran(w, "stable_leader");
            Ok(())
        }
    }
}

/// Feed what each server reported since the last call to the promise checkers (`crate::promises`).
pub(super) fn check_promises(servers: &mut BTreeMap<u64, Server>, w: &Shared) -> Result<(), Failure> {
    let mut world = world(w);
    for (id, s) in servers.iter_mut() {
        for (at, what) in s.disk.take_observations() {
            // Observations are timed; one made before the flip (a start the poll has not seen yet)
            // says nothing about it.
            if let durakv::probe::Observation::Recovered(r) = &what
                && let Some((flipped_at, flip)) = s.wal_flip_unseen.take_if(|(t, _)| at >= *t)
                && r.wal != durakv::probe::WalFinding::Corrupt
            {
                return Err(Failure {
                    invariant: "fault_effect",
                    explanation: format!(
                        "server {id}: {flip} at {flipped_at} ms (an acknowledged record), but its restart at {at} ms found {:?}: a lone flipped bit is corruption, never a torn tail to cut away",
                        r.wal
                    ),
                });
            }
            if let durakv::probe::Observation::Leader { term } = &what {
                world.leaders.push((at, *id, *term));
            }
            world
                .promises
                .observe(*id, at, &what, s.log_damaged || s.wal_rot)
                .map_err(|v| Failure { invariant: v.invariant, explanation: v.explanation })?;
        }
    }
    Ok(())
}
