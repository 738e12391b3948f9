//! The faults of a run, drawn from its seed: the same seed gives the same schedule, so a failing
//! run is replayed with `EA_FAULT_SEED`.

use std::time::Duration;

/// SplitMix64: small, fast, and the same everywhere.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn draw(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.draw() % (hi - lo + 1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.draw() as usize % items.len()]
    }
}

/// What fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// kill -9 of a node (not the leader, when another is there), restarted after `hold`.
    KillNode,
    /// kill -9 of the node holding the rollout lease, restarted after `hold`.
    KillLeader,
    /// PostgreSQL stopped and started at once.
    PostgresRestart,
    /// PostgreSQL stopped for `hold`.
    PostgresStop,
    RedisRestart,
    RedisStop,
    /// One node cut off PostgreSQL, Redis or both for `hold`; its agents' sockets stay up.
    Partition {
        postgres: bool,
        redis: bool,
    },
    /// The worker of a real agent that is upgrading (before its swap), killed.
    KillWorker,
}

impl Kind {
    const ALL: [Kind; 10] = [
        Kind::KillNode,
        Kind::KillLeader,
        Kind::PostgresRestart,
        Kind::PostgresStop,
        Kind::RedisRestart,
        Kind::RedisStop,
        Kind::Partition { postgres: true, redis: false },
        Kind::Partition { postgres: false, redis: true },
        Kind::Partition { postgres: true, redis: true },
        Kind::KillWorker,
    ];
}

#[derive(Debug, Clone)]
pub struct Planned {
    /// From the start of the faults.
    pub at: Duration,
    pub kind: Kind,
    pub hold: Duration,
    /// Which node, for a node fault (taken modulo the nodes).
    pub node: usize,
}

/// The hold of a fault: the 20 s outages, a node down a few seconds, a partition 10 to 20 s.
fn hold(kind: Kind, rng: &mut Rng) -> Duration {
    Duration::from_secs(match kind {
        Kind::PostgresStop | Kind::RedisStop => 20,
        Kind::Partition { .. } => rng.between(10, 20),
        Kind::KillNode | Kind::KillLeader => rng.between(2, 6),
        Kind::PostgresRestart | Kind::RedisRestart | Kind::KillWorker => 0,
    })
}

/// Short mode: one fault of each family (a node or the leader killed, the store or the bus
/// stopped, a partition, a worker killed), in an order and with details drawn from the seed.
pub fn short(seed: u64) -> Vec<Planned> {
    let mut rng = Rng::new(seed);
    let mut kinds = vec![
        *rng.pick(&[Kind::KillLeader, Kind::KillLeader, Kind::KillNode]),
        *rng.pick(&[Kind::PostgresStop, Kind::RedisStop, Kind::PostgresRestart, Kind::RedisRestart]),
        *rng.pick(&Kind::ALL[6..9]),
        Kind::KillWorker,
    ];
    // Fisher-Yates, from the seed.
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.between(0, i as u64) as usize);
    }
    let mut at = Duration::from_secs(3);
    kinds
        .into_iter()
        .map(|kind| {
            let p = Planned { at, kind, hold: hold(kind, &mut rng), node: rng.draw() as usize };
            at += p.hold.min(Duration::from_secs(12)) + Duration::from_secs(rng.between(3, 6));
            p
        })
        .collect()
}

/// Long mode: faults of every kind for `span`, one starting every 4 to 12 s, overlapping.
pub fn long(seed: u64, span: Duration) -> Vec<Planned> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    let mut at = Duration::from_secs(3);
    while at < span {
        let kind = *rng.pick(&Kind::ALL);
        let p = Planned { at, kind, hold: hold(kind, &mut rng), node: rng.draw() as usize };
        at += Duration::from_secs(rng.between(4, 12));
        out.push(p);
    }
    out
}
