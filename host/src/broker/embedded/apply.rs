//! What each [`Op`] does inside the writer's transaction (`writer.rs`):
//! the rows it writes, and the effects it leaves for the syncer to carry
//! out once the group is durable (deliveries to queue, retries to
//! schedule, callers to answer).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Transaction;

use super::writer::{Effects, Op, answer};
use super::{Group, Routes, prune, store};
use crate::broker::{Ack, BrokerError, Delivery};
use crate::event::Event;

pub(super) fn apply(
    tx: &Transaction,
    op: Op,
    routes: &RwLock<Routes>,
    groups: &RwLock<HashMap<Arc<str>, Arc<Group>>>,
    fx: &mut Effects,
) {
    match op {
        Op::Commit {
            ack,
            events,
            state,
            kv,
            early,
            runs,
            reply,
        } => {
            // A commit with state is all or nothing within the group's
            // transaction: a savepoint undoes what of it was written
            // if a later part fails.
            // (Nothing to undo for a commit that writes no state: its
            // check writes nothing.)
            let savepoint = kv.as_ref().is_some_and(|kv| !kv.writes.writes.is_empty());
            if savepoint && let Err(e) = sql(tx, &["SAVEPOINT state_commit"]) {
                return answer(fx, reply, Err(e));
            }
            let (settled, delivered) = (fx.settled.len(), fx.deliver.len());
            let r = (|| {
                if let Some(kv) = &kv
                    && let Err(refused) = super::kv::apply(tx, &kv.writes, &kv.limits)?
                {
                    return Err(BrokerError::Refused(refused));
                }
                if let Some((group, seq)) = ack
                    && store::delete_delivery(tx, &group, seq)?
                    && let Some(g) = groups.read().expect("groups lock").get(&group)
                {
                    fx.settled.push(g.clone());
                }
                for (key, value) in &state {
                    store::put_state(tx, key, value.as_deref())?;
                }
                if let Some(r) = &runs {
                    prune::reopen(tx, &r.reopened)?;
                    prune::mark_ended(tx, &r.ended, now_ms())?;
                    for run in &r.entries {
                        super::runs::put(tx, run)?;
                    }
                }
                let first = fx.deliver.len();
                publish(tx, events, routes, groups, fx)?;
                if early {
                    let now = fx.deliver.split_off(first);
                    fx.early.extend(now);
                }
                Ok(())
            })();
            if savepoint {
                let undo: &[&str] = if r.is_ok() {
                    &["RELEASE state_commit"]
                } else {
                    // Nor are its effects made visible.
                    fx.settled.truncate(settled);
                    fx.deliver.truncate(delivered);
                    &["ROLLBACK TO state_commit", "RELEASE state_commit"]
                };
                if let Err(e) = sql(tx, undo) {
                    return answer(fx, reply, Err(e));
                }
            }
            answer(fx, reply, r);
        }
        Op::Retry {
            delivery,
            seq,
            delay,
            reply,
        } => {
            let not_before = now_ms() + delay.as_millis() as i64;
            let r = store::insert_delivery(tx, &delivery.group, seq, delivery.attempt, not_before);
            if r.is_ok()
                && let Some(g) = groups.read().expect("groups lock").get(&delivery.group)
            {
                let next = Delivery {
                    version: None,
                    attempt: delivery.attempt + 1,
                    ..delivery
                };
                fx.retry.push((g.clone(), next, delay));
            }
            answer(fx, reply, r);
        }
        Op::DeadLetter {
            group,
            seq,
            attempts,
            class,
            message,
            version,
            reply,
        } => {
            let id = uuid::Uuid::now_v7().to_string();
            let r = (|| {
                let dl = store::NewDeadLetter {
                    id: &id,
                    group: &group,
                    seq,
                    class,
                    message: &message,
                    attempts,
                    version: version.as_ref(),
                };
                store::insert_dead_letter(tx, &dl)?;
                if store::delete_delivery(tx, &group, seq)?
                    && let Some(g) = groups.read().expect("groups lock").get(&group)
                {
                    fx.settled.push(g.clone());
                }
                Ok(id)
            })();
            answer(fx, reply, r);
        }
        Op::Replay { id, reply } => {
            let r = replay(tx, &id, groups, fx);
            answer(fx, reply, r);
        }
        Op::Purge { id, reply } => {
            let r = store::take_dead_letter(tx, &id).map(|_| ());
            answer(fx, reply, r);
        }
        Op::Load { group, reply } => {
            let r = load(tx, group, fx);
            answer(fx, reply, r);
        }
        Op::Ready { reply } => answer(fx, reply, Ok(())),
        // Taken out of the group by `Writer::run`: never here.
        Op::Prune { reply } => reply(Err(BrokerError::Misuse(
            "a prune in a group of commits".into(),
        ))),
    }
}

/// Answer `op` without applying it: the store is damaged (`damage`).
pub(super) fn refuse(op: Op, damage: &str) {
    let err = || BrokerError::Damaged(damage.to_string());
    match op {
        Op::Commit { reply, .. }
        | Op::Retry { reply, .. }
        | Op::Replay { reply, .. }
        | Op::Purge { reply, .. }
        | Op::Load { reply, .. }
        | Op::Ready { reply } => reply(Err(err())),
        Op::DeadLetter { reply, .. } => reply(Err(err())),
        Op::Prune { reply } => reply(Err(err())),
    }
}

/// Run `statements` (no parameters, no rows), each prepared once per
/// connection.
fn sql(tx: &Transaction, statements: &[&str]) -> Result<(), BrokerError> {
    for s in statements {
        tx.prepare_cached(s)?.execute([])?;
    }
    Ok(())
}

/// Store events and route each new one: to the one group its `troupeto`
/// extension names (a command or a reply), or else to every group
/// subscribed to its kind.
fn publish(
    tx: &Transaction,
    events: Vec<Event>,
    routes: &RwLock<Routes>,
    groups: &RwLock<HashMap<Arc<str>, Arc<Group>>>,
    fx: &mut Effects,
) -> Result<(), BrokerError> {
    let routes = routes.read().expect("routes lock");
    for event in events {
        let Some(seq) = store::insert_event(tx, &event)? else {
            tracing::debug!(id = %event.id, "duplicate event id: ignored");
            continue;
        };
        let event = Arc::new(event);
        if let Some(to) = event.extensions.get(crate::event::TARGET) {
            // A group not running in this process finds the row on start.
            store::insert_delivery(tx, to, seq, 0, 0)?;
            if let Some(g) = groups.read().expect("groups lock").get(to.as_str()) {
                fresh_delivery(g, seq, &event, fx);
            }
            continue;
        }
        for g in routes.get(&event.kind).into_iter().flatten() {
            store::insert_delivery(tx, &g.name, seq, 0, 0)?;
            fresh_delivery(g, seq, &event, fx);
        }
    }
    Ok(())
}

/// Make a first delivery of `event` to `g` visible once the commit is done.
fn fresh_delivery(g: &Arc<Group>, seq: i64, event: &Arc<Event>, fx: &mut Effects) {
    fx.deliver.push((
        g.clone(),
        Delivery {
            version: None,
            group: g.name.clone(),
            event: event.clone(),
            attempt: 1,
            ack: Ack::new(super::Seq(seq)),
        },
    ));
}

fn replay(
    tx: &Transaction,
    id: &str,
    groups: &RwLock<HashMap<Arc<str>, Arc<Group>>>,
    fx: &mut Effects,
) -> Result<(), BrokerError> {
    let (group, seq) = store::take_dead_letter(tx, id)?;
    store::insert_delivery(tx, &group, seq, 0, 0)?;
    // A group this process does not run picks the delivery up when it
    // subscribes.
    if let Some(g) = groups.read().expect("groups lock").get(group.as_str()) {
        fresh_delivery(g, seq, &Arc::new(store::event(tx, seq)?), fx);
    }
    Ok(())
}

fn load(tx: &Transaction, group: Arc<Group>, fx: &mut Effects) -> Result<(), BrokerError> {
    let now = now_ms();
    for (seq, attempts, not_before, event) in store::pending(tx, &group.name)? {
        let d = Delivery {
            version: None,
            group: group.name.clone(),
            event: Arc::new(event),
            attempt: attempts + 1,
            ack: Ack::new(super::Seq(seq)),
        };
        if not_before > now {
            let delay = Duration::from_millis((not_before - now) as u64);
            fx.added.push(group.clone());
            fx.retry.push((group.clone(), d, delay));
        } else {
            fx.deliver.push((group.clone(), d));
        }
    }
    Ok(())
}

/// Apply one item another process queued; a bad item is logged and dropped
/// (it was checked when queued, so this is a version skew or a hand edit).
pub(super) fn take_inbox(
    tx: &Transaction,
    n: i64,
    op: &str,
    body: &str,
    routes: &RwLock<Routes>,
    groups: &RwLock<HashMap<Arc<str>, Arc<Group>>>,
    fx: &mut Effects,
) {
    let r = match op {
        "publish" => serde_json::from_str(body)
            .map_err(|e| BrokerError::BadInput(e.to_string()))
            .and_then(|v| {
                Event::from_json(v, "troupe://publish")
                    .map_err(|e| BrokerError::BadInput(e.to_string()))
            })
            .and_then(|e| publish(tx, vec![e], routes, groups, fx)),
        "replay" => replay(tx, body, groups, fx),
        "purge" => store::take_dead_letter(tx, body).map(|_| ()),
        other => Err(BrokerError::BadInput(format!("unknown inbox op {other:?}"))),
    };
    if let Err(e) = r {
        tracing::error!(op, "dropping a queued item that cannot be applied: {e}");
    }
    if let Err(e) = store::delete_inbox(tx, n) {
        tracing::error!("cannot remove inbox item {n}: {e}");
    }
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
