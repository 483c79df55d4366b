//! `monolith generate`: fills a database with a deterministic synthetic board, for benchmarks
//! and migration rehearsals at realistic sizes.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use crate::db::{self, Db, DbError, Location, POST_INDEXES, Seed};
use crate::legacy::Resource;

/// Flags of `monolith generate`.
#[derive(clap::Args, Clone, Debug)]
pub struct GenerateArgs {
    /// SQLite database file to fill; created, with its directory, if missing (a PostgreSQL
    /// board is filled by generating a file and copying it with scripts/migrate-data).
    #[arg(long)]
    pub db: PathBuf,
    /// Number of users.
    #[arg(long)]
    pub users: u64,
    /// Number of threads, each opened by a random user.
    #[arg(long)]
    pub threads: u64,
    /// Number of posts, each in a random thread by a random user.
    #[arg(long)]
    pub posts: u64,
    /// Seed of the generator: the same seed and sizes give the same rows.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Delete the rows already in the database instead of refusing to touch them.
    #[arg(long)]
    pub replace: bool,
}

/// How many rows of each kind to generate, and from which seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Number of users.
    pub users: u64,
    /// Number of threads.
    pub threads: u64,
    /// Number of posts.
    pub posts: u64,
    /// Generator seed.
    pub seed: u64,
}

/// Why generation refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The database already has rows and `--replace` was not given.
    #[error(
        "the database already holds {users} users, {threads} threads and {posts} posts; \
         pass --replace to delete them first"
    )]
    NotEmpty {
        /// Users present.
        users: u64,
        /// Threads present.
        threads: u64,
        /// Posts present.
        posts: u64,
    },
    /// Threads or posts were asked for without anything for them to refer to.
    #[error("{0}")]
    Impossible(&'static str),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<rusqlite::Error> for GenerateError {
    fn from(err: rusqlite::Error) -> GenerateError {
        GenerateError::Db(DbError::Sqlite(err))
    }
}

/// Opens (or creates, unseeded) the database of `args` and fills it; returns the time taken.
pub fn run(args: &GenerateArgs) -> Result<Duration, GenerateError> {
    let started = Instant::now();
    if let Location::Postgres(_) = Location::parse(args.db.as_os_str()) {
        return Err(GenerateError::Impossible(
            "generate fills a SQLite file only: generate into a file, then copy it into \
             PostgreSQL with scripts/migrate-data",
        ));
    }
    let db = Db::open(&args.db, &Resource::ALL, Seed::Empty)?;
    let plan = Plan {
        users: args.users,
        threads: args.threads,
        posts: args.posts,
        seed: args.seed,
    };
    db.blocking(|conn| Ok(fill(conn, &plan, args.replace)))??;
    Ok(started.elapsed())
}

/// Fills a database holding the monolith's schema, in one transaction.
pub fn fill(conn: &mut Connection, plan: &Plan, replace: bool) -> Result<(), GenerateError> {
    if plan.threads > 0 && plan.users == 0 {
        return Err(GenerateError::Impossible("threads need at least one user"));
    }
    if plan.posts > 0 && (plan.threads == 0 || plan.users == 0) {
        return Err(GenerateError::Impossible(
            "posts need at least one thread and one user",
        ));
    }
    // Durability buys nothing for a fill that is redone from its seed after a crash.
    conn.pragma_update(None, "synchronous", "OFF")?;
    let result = fill_in_transaction(conn, plan, replace);
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    result
}

fn fill_in_transaction(
    conn: &mut Connection,
    plan: &Plan,
    replace: bool,
) -> Result<(), GenerateError> {
    let tx = conn.transaction()?;
    let users = db::count(&*tx, Resource::Users)?;
    let threads = db::count(&*tx, Resource::Threads)?;
    let posts = db::count(&*tx, Resource::Posts)?;
    // Building the post indexes once at the end is far cheaper than keeping them up to date
    // (through a --replace delete as well as the fill).
    tx.execute_batch("DROP INDEX IF EXISTS posts_by_thread; DROP INDEX IF EXISTS posts_by_user;")?;
    if users + threads + posts > 0 {
        if !replace {
            return Err(GenerateError::NotEmpty {
                users,
                threads,
                posts,
            });
        }
        tx.execute_batch("DELETE FROM posts; DELETE FROM threads; DELETE FROM users;")?;
    }

    let mut rng = SplitMix64(plan.seed);
    let mut text = String::new();
    {
        let mut insert =
            tx.prepare("INSERT INTO users (id, username, name, bio) VALUES (?1, ?2, ?3, ?4)")?;
        let mut name = String::new();
        for id in 1..=plan.users {
            name.clear();
            let _ = write!(name, "{} {}", rng.pick(FIRST_NAMES), rng.pick(LAST_NAMES));
            let username = format!("user{id}");
            sentence(&mut rng, &mut text, 4, 12);
            insert.execute(params![id as i64, username, name, text])?;
        }
    }
    {
        let mut insert =
            tx.prepare("INSERT INTO threads (id, title, created_by) VALUES (?1, ?2, ?3)")?;
        for id in 1..=plan.threads {
            sentence(&mut rng, &mut text, 3, 8);
            let created_by = rng.below(plan.users) + 1;
            insert.execute(params![id as i64, text, created_by as i64])?;
        }
    }
    {
        let mut insert =
            tx.prepare("INSERT INTO posts (id, thread, text, user) VALUES (?1, ?2, ?3, ?4)")?;
        for id in 1..=plan.posts {
            let thread = rng.below(plan.threads) + 1;
            let user = rng.below(plan.users) + 1;
            sentence(&mut rng, &mut text, 5, 20);
            insert.execute(params![id as i64, thread as i64, text, user as i64])?;
        }
    }
    tx.execute_batch(POST_INDEXES)?;
    tx.commit()?;
    Ok(())
}

/// Writes `min..=max` random words into `out`, capitalised, ending with a full stop.
fn sentence(rng: &mut SplitMix64, out: &mut String, min: u64, max: u64) {
    out.clear();
    let words = min + rng.below(max - min + 1);
    for i in 0..words {
        let word = rng.pick(WORDS);
        if i == 0 {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                out.extend(first.to_uppercase());
                out.push_str(chars.as_str());
            }
        } else {
            out.push(' ');
            out.push_str(word);
        }
    }
    out.push('.');
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast and the same on every platform, which is
/// all a reproducible fill needs.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`); the modulo bias is irrelevant for test data.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const FIRST_NAMES: &[&str] = &[
    "Finn",
    "Jake",
    "Marceline",
    "Bonnibel",
    "Simon",
    "Betty",
    "Fionna",
    "Cake",
    "Lemongrab",
    "Gunter",
    "Peppermint",
    "Lumpy",
    "Flame",
    "Tree",
    "Susan",
    "Martin",
    "Minerva",
    "Huntress",
];

const LAST_NAMES: &[&str] = &[
    "Mertens",
    "Abadeer",
    "Bubblegum",
    "Petrikov",
    "Grof",
    "Campbell",
    "Space",
    "Wizard",
    "Trunks",
    "Butler",
    "Princess",
    "Rainicorn",
    "Kong",
    "Banana",
    "Cinnamon",
    "Bun",
];

const WORDS: &[&str] = &[
    "adventure",
    "time",
    "candy",
    "kingdom",
    "lich",
    "guitar",
    "party",
    "tomorrow",
    "sword",
    "dungeon",
    "treasure",
    "vampire",
    "queen",
    "dog",
    "human",
    "hero",
    "magic",
    "science",
    "banana",
    "guard",
    "tree",
    "fort",
    "ice",
    "king",
    "penguin",
    "fire",
    "wizard",
    "battle",
    "forest",
    "mountain",
    "ocean",
    "song",
    "bass",
    "picnic",
    "pancakes",
    "bacon",
    "mathematical",
    "algebraic",
    "radical",
    "lumpy",
    "space",
    "grass",
    "crystal",
    "gem",
    "crown",
    "cloud",
    "rainbow",
    "unicorn",
    "wish",
    "dream",
    "the",
    "a",
    "of",
    "and",
    "to",
    "with",
    "at",
    "in",
    "we",
    "you",
    "should",
    "will",
    "never",
    "always",
    "maybe",
    "tonight",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // First outputs for seed 0 from the reference implementation.
        let mut rng = SplitMix64(0);
        assert_eq!(rng.next(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next(), 0x6e78_9e6a_a1b9_65f4);
    }
}
